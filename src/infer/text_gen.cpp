#include "infer/text_gen.h"

#include <algorithm>

#include "core/error.h"
#include "infer/batch_forward.h"

namespace sky {

std::string PrintableFilter::push(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    const unsigned char c = s[i];
    if (state_ == Esc) {
      state_ = c == '[' ? Csi : Normal;
      if (c == '[') { i++; continue; }
    } else if (state_ == Csi) {
      if (c >= 0x40 && c <= 0x7e) state_ = Normal;  // the final byte ends the sequence
      i++;
      continue;
    }
    if (c == 0x1b) {
      state_ = Esc;
      i++;
    } else if (c < 0x80) {
      if (c >= 0x20 ? c != 0x7f : c == '\n' || c == '\t') out += char(c);
      i++;
    } else {
      const size_t len = (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
      size_t have = 1;
      while (len && have < len && i + have < s.size() && (static_cast<unsigned char>(s[i + have]) & 0xC0) == 0x80)
        have++;
      if (len && have == len) {
        out.append(s, i, len);
      } else {
        out += "\xef\xbf\xbd";
      }
      i += len ? have : 1;
    }
  }
  return out;
}

std::string printable_text(const std::string& s) { return PrintableFilter().push(s); }

std::string generate_text(const Model& m, const Tokenizer& tok, const std::string& prompt, const TextGenOptions& o,
                          const std::function<void(const std::string&)>& on_text) {
  validate_sampler(o.sampler);
  const ModelConfig& cfg = m.cfg;
  SKY_CHECK(tok.vocab_size() <= cfg.vocab_size, "tokenizer {} has {} ids, more than the model's vocab_size {}",
            tok.path(), tok.vocab_size(), cfg.vocab_size);
  std::vector<int32_t> ids;
  if (o.doc_start && tok.eos_id() >= 0) ids.push_back(tok.eos_id());
  for (int32_t id : tok.encode(prompt)) ids.push_back(id);
  SKY_CHECK(!ids.empty(), "generate: empty prompt");
  SKY_CHECK(int(ids.size()) < cfg.max_position_embeddings, "generate: the prompt ({} tokens) fills the context ({})",
            ids.size(), cfg.max_position_embeddings);
  const int total = std::min<int>(int(ids.size()) + o.max_new_tokens, cfg.max_position_embeddings);

  // The engine's decoder over the training weights (f32: the same logits the trainer's forward gives).
  const InferModel im = InferModel::from_model(m, DType::F32);
  SeqKV kv;
  kv.init(im.cfg, total);
  BatchScratch scratch;
  Sampler sampler(o.sampler);
  std::vector<float> logits(cfg.vocab_size);
  batch_forward(im, {{&kv, ids.data(), int(ids.size())}}, logits.data(), scratch);
  StreamDecoder dec(tok, /*at_start=*/false);  // the continuation's leading space is real text
  PrintableFilter filter;
  std::string out;
  auto emit = [&](std::string s) {
    if (o.printable) s = filter.push(s);
    if (s.empty()) return;
    out += s;
    if (on_text) on_text(s);
  };
  for (int pos = int(ids.size()); pos < total; pos++) {
    int32_t t = sampler.sample(logits.data(), cfg.vocab_size);
    if (o.stop_at_eos && t == tok.eos_id()) break;
    if (t < tok.vocab_size()) emit(dec.push(t));  // ids past the tokenizer's range have no text
    if (pos + 1 < total) batch_forward(im, {{&kv, &t, 1}}, logits.data(), scratch);
  }
  emit(dec.flush());
  return out;
}

}  // namespace sky
