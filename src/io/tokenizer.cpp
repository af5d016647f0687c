#include "io/tokenizer.h"

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <algorithm>
#include <climits>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <thread>
#include <unordered_map>

#include "core/error.h"
#include "io/gguf_reader.h"
#include "io/hf_tokenizer.h"
#include "io/token_data.h"

namespace sky {

namespace fs = std::filesystem;

namespace {

const std::string kSpaceSymbol = "\xe2\x96\x81";  // "▁", SentencePiece's visible space

// SentencePiece skips training lines longer than max_sentence_length; we cut them instead so
// corpora with very long lines (one document per line) still train on all their text.
constexpr size_t kMaxLine = 4096;

bool is_blank(const std::string& s) { return s.find_first_not_of(" \t\r\f\v") == std::string::npos; }

void strip_cr(std::string& s) {
  if (!s.empty() && s.back() == '\r') s.pop_back();
}

void check_readable(const std::string& path, const char* what) {
  std::error_code ec;
  SKY_CHECK(fs::is_regular_file(path, ec), "{}: {} is missing or not a regular file", what, path);
  std::ifstream in(path, std::ios::binary);
  SKY_CHECK(in.good(), "{}: cannot read {}", what, path);
}

// Feeds the trainer the lines of several files, skipping blank lines and lone "%" (fortune
// separators, which would otherwise become the most frequent "sentence") and cutting long lines.
class LineIterator : public sentencepiece::SentenceIterator {
 public:
  explicit LineIterator(const std::vector<std::string>& files) : files_(files) { advance(); }
  bool done() const override { return done_; }
  void Next() override { advance(); }
  const std::string& value() const override { return value_; }
  sentencepiece::util::Status status() const override { return status_; }

 private:
  void advance() {
    while (true) {
      if (!rest_.empty()) {
        take_piece();
        return;
      }
      if (!in_.is_open() || !std::getline(in_, rest_)) {
        if (in_.is_open()) in_.close();
        if (next_file_ == files_.size()) {
          done_ = true;
          return;
        }
        const std::string& f = files_[next_file_++];
        in_.open(f, std::ios::binary);
        if (!in_) {
          status_ = sentencepiece::util::Status(sentencepiece::util::StatusCode::kNotFound, "cannot read " + f);
          done_ = true;
          return;
        }
        rest_.clear();
        continue;
      }
      strip_cr(rest_);
      if (is_blank(rest_) || rest_ == "%") rest_.clear();
    }
  }

  // Cuts at a space in the second half of the limit when there is one (the space becomes the next
  // piece's dummy prefix), else at a UTF-8 character boundary.
  void take_piece() {
    if (rest_.size() <= kMaxLine) {
      value_ = std::move(rest_);
      rest_.clear();
      return;
    }
    size_t cut = rest_.rfind(' ', kMaxLine);
    size_t skip = 1;
    if (cut == std::string::npos || cut < kMaxLine / 2) {
      cut = kMaxLine;
      while (cut > 0 && (static_cast<unsigned char>(rest_[cut]) & 0xC0) == 0x80) cut--;
      skip = 0;
    }
    value_ = rest_.substr(0, cut);
    rest_.erase(0, cut + skip);
  }

  const std::vector<std::string>& files_;
  size_t next_file_ = 0;
  std::ifstream in_;
  std::string rest_, value_;
  bool done_ = false;
  sentencepiece::util::Status status_;
};

// The few fields of SentencePiece's ModelProto that decide whether normalization can merge input,
// read from its protobuf wire format (the generated header is not installed with the library).
struct NormalizationFacts {
  bool parsed = false;
  bool charsmap = false;             // NormalizerSpec.precompiled_charsmap (2) non-empty: NFKC etc.
  bool remove_extra_spaces = true;   // NormalizerSpec.remove_extra_whitespaces (4), default true
  bool byte_fallback = false;        // TrainerSpec.byte_fallback (35), default false
};

// Calls f(field, varint, bytes) for each field of a message (bytes for length-delimited ones);
// false on a malformed message or a wire type this reader does not know.
template <class F>
bool read_fields(std::string_view m, F f) {
  size_t i = 0;
  auto varint = [&](uint64_t& v) {
    v = 0;
    for (int shift = 0; shift < 64 && i < m.size(); shift += 7) {
      const uint8_t b = uint8_t(m[i++]);
      v |= uint64_t(b & 0x7F) << shift;
      if (!(b & 0x80)) return true;
    }
    return false;
  };
  while (i < m.size()) {
    uint64_t key, v = 0;
    if (!varint(key)) return false;
    std::string_view bytes;
    switch (key & 7) {
      case 0:
        if (!varint(v)) return false;
        break;
      case 1:
      case 5: {
        const size_t n = (key & 7) == 1 ? 8 : 4;
        if (m.size() - i < n) return false;
        i += n;
        break;
      }
      case 2:
        if (!varint(v) || v > m.size() - i) return false;
        bytes = m.substr(i, size_t(v));
        i += size_t(v);
        break;
      default:
        return false;
    }
    f(int(key >> 3), v, bytes);
  }
  return true;
}

NormalizationFacts normalization_facts(const std::string& proto) {
  NormalizationFacts n;
  bool ok = true;
  n.parsed = read_fields(proto, [&](int field, uint64_t, std::string_view bytes) {
    if (field == 2)
      ok &= read_fields(bytes, [&](int f, uint64_t v, std::string_view) {
        if (f == 35) n.byte_fallback = v != 0;
      });
    if (field == 3)
      ok &= read_fields(bytes, [&](int f, uint64_t v, std::string_view b) {
        if (f == 2) n.charsmap = !b.empty();
        if (f == 4) n.remove_extra_spaces = v != 0;
      });
  });
  n.parsed = n.parsed && ok;
  return n;
}

}  // namespace

Tokenizer Tokenizer::from_processor(std::shared_ptr<sentencepiece::SentencePieceProcessor> sp, std::string path) {
  Tokenizer t;
  t.sp_ = std::move(sp);
  t.path_ = std::move(path);
  // The model proto's normalizer spec is not in the public headers; a dummy prefix shows as a
  // leading space when a lone word is encoded and its pieces read back.
  std::string s;
  for (int32_t id : t.encode("a")) s += t.decode_piece(id);
  t.dummy_prefix_ = s == " a";

  // min_tokens: how many input bytes one token can cover at most. A piece covers its own text
  // ("▁" standing for one space); a byte piece one byte, but the last byte of a character spelled
  // in bytes carries the whole character (up to 4 bytes), hence the floor of 4.
  const NormalizationFacts nf = normalization_facts(t.sp_->serialized_model_proto());
  if (nf.parsed && !nf.charsmap && nf.byte_fallback) {
    size_t longest = 4;
    for (int id = 0; id < t.vocab_size(); id++) longest = std::max(longest, t.decode_piece(id).size());
    t.max_piece_bytes_ = int(longest);
    t.folds_spaces_ = nf.remove_extra_spaces;
  }
  return t;
}

int64_t Tokenizer::min_tokens(std::string_view text) const {
  if (max_piece_bytes_ == 0) return 0;
  // Folded spaces: a run of them may shrink to the one "▁" of a piece, so only the other bytes,
  // which normalization keeps one for one, are sure to need covering.
  const int64_t bytes = folds_spaces_ ? int64_t(text.size() - std::count(text.begin(), text.end(), ' '))
                                      : int64_t(text.size());
  return (bytes + max_piece_bytes_ - 1) / max_piece_bytes_;
}

Tokenizer Tokenizer::from_hf(std::shared_ptr<const HfTokenizer> hf) {
  Tokenizer t;
  t.path_ = hf->path();
  t.dummy_prefix_ = hf->adds_dummy_prefix();
  // min_tokens: the tokenizer.json's own bound on the input bytes of one id (0: none).
  const size_t bound = hf->max_piece_bytes();
  t.max_piece_bytes_ = bound <= size_t(INT_MAX) ? int(bound) : 0;
  t.hf_ = std::move(hf);
  return t;
}

std::string find_tokenizer(const std::string& model_dir) {
  std::error_code ec;
  if (gguf::File::is_gguf(model_dir)) {  // its own tokenizer when it has a vocabulary
    try {
      return gguf::File::open(model_dir).has("tokenizer.ggml.model") ? model_dir : "";
    } catch (const Error&) {
      return "";  // loading the model reports what is wrong with the file
    }
  }
  for (const char* name : {"tokenizer.json", "tokenizer.model"})
    if (fs::path p = fs::path(model_dir) / name; fs::is_regular_file(p, ec)) return p.string();
  return "";
}

namespace {

// A .json name, or a file starting with '{' as every tokenizer.json does: a SentencePiece model is
// a protobuf, whose first byte is a field tag (0x0A), never '{'.
bool looks_like_json(const std::string& path) {
  if (fs::path(path).extension() == ".json") return true;
  std::ifstream in(path, std::ios::binary);
  char c;
  return in.get(c) && c == '{';
}

}  // namespace

Tokenizer Tokenizer::load(const std::string& path) {
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    std::string file = find_tokenizer(path);
    SKY_CHECK(!file.empty(), "tokenizer: {} is a directory without tokenizer.json or tokenizer.model", path);
    return load(file);
  }
  check_readable(path, "tokenizer");
  if (gguf::File::is_gguf(path)) return from_gguf(path);
  if (looks_like_json(path)) return from_hf(HfTokenizer::load(path));
  auto sp = std::make_shared<sentencepiece::SentencePieceProcessor>();
  // Most problems come back as a status, but the trie builder throws its own exception (a piece
  // that starts with a NUL byte); either way the error names the file.
  sentencepiece::util::Status st;
  try {
    st = sp->Load(path);
  } catch (const std::exception& e) {
    fail("tokenizer {}: neither a tokenizer.json nor a valid SentencePiece model: {}", path, e.what());
  }
  SKY_CHECK(st.ok(), "tokenizer {}: neither a tokenizer.json nor a valid SentencePiece model: {}", path,
            st.ToString());
  return from_processor(std::move(sp), path);
}

Tokenizer Tokenizer::train(const std::vector<std::string>& text_files, const std::string& model_path,
                           int vocab_size, const TokenizerTrainOptions& opt) {
  SKY_CHECK(!text_files.empty(), "tokenizer training needs at least one text file");
  for (const auto& f : text_files) check_readable(f, "tokenizer training");
  SKY_CHECK(opt.model_type == "bpe" || opt.model_type == "unigram",
            "tokenizer model type '{}' is not one of: bpe, unigram", opt.model_type);
  SKY_CHECK(vocab_size > 259, "tokenizer vocab size {} is too small: byte fallback alone takes 259 ids", vocab_size);
  SKY_CHECK(opt.seed != UINT_MAX, "tokenizer seed {} is reserved by SentencePiece", opt.seed);
  SKY_CHECK(opt.threads > 0, "tokenizer training threads {} must be positive", opt.threads);

  std::string out = model_path;
  if (fs::path(out).extension() != ".model") out += ".model";

  const std::unordered_map<std::string, std::string> args = {
      {"model_type", opt.model_type},
      {"vocab_size", std::to_string(vocab_size)},
      {"character_coverage", fmt::format("{}", opt.character_coverage)},
      {"byte_fallback", "true"},
      {"unk_id", "0"},
      {"bos_id", "1"},
      {"eos_id", "2"},
      {"pad_id", "-1"},
      // Identity normalization and kept whitespace, so decode(encode(x)) == x for any text.
      {"normalization_rule_name", "identity"},
      {"remove_extra_whitespaces", "false"},
      {"add_dummy_prefix", "true"},
      {"split_digits", "true"},
      {"allow_whitespace_only_pieces", "true"},
      {"max_sentence_length", std::to_string(kMaxLine)},
      {"input_sentence_size", std::to_string(opt.input_sentence_size)},
      {"shuffle_input_sentence", "true"},
      {"num_threads", std::to_string(opt.threads)},
      {"minloglevel", opt.verbose ? "0" : "2"},
  };

  // SentencePiece keeps one random generator per thread, seeded on first use; a fresh thread makes
  // the sampling depend on opt.seed alone, however many models this process trained before.
  std::string proto;
  sentencepiece::util::Status st;
  std::thread worker([&] {
    sentencepiece::SetRandomGeneratorSeed(opt.seed);
    LineIterator lines(text_files);
    st = sentencepiece::SentencePieceTrainer::Train(args, &lines, &proto);
  });
  worker.join();
  SKY_CHECK(st.ok(), "tokenizer training on {} ({} files) failed: {}", text_files.front(), text_files.size(),
            st.ToString());

  std::string tmp = out + ".tmp";
  {
    std::ofstream o(tmp, std::ios::binary | std::ios::trunc);
    o.write(proto.data(), std::streamsize(proto.size()));
    SKY_CHECK(o.good(), "tokenizer {}: cannot write {}", out, tmp);
  }
  std::error_code ec;
  fs::rename(tmp, out, ec);
  SKY_CHECK(!ec, "tokenizer {}: cannot rename {} into place: {}", out, tmp, ec.message());

  auto sp = std::make_shared<sentencepiece::SentencePieceProcessor>();
  st = sp->LoadFromSerializedProto(proto);
  SKY_CHECK(st.ok(), "tokenizer {}: trained model does not load: {}", out, st.ToString());
  return from_processor(std::move(sp), out);
}

std::vector<int32_t> Tokenizer::encode(std::string_view text) const {
  if (hf_) return hf_->encode(text);
  std::vector<int> ids;
  auto st = sp_->Encode(text, &ids);
  SKY_CHECK(st.ok(), "tokenizer {}: encode failed: {}", path_, st.ToString());
  return ids;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const {
  if (hf_) return hf_->decode(ids);
  const int n = vocab_size();
  for (size_t i = 0; i < ids.size(); i++)
    SKY_CHECK(ids[i] >= 0 && ids[i] < n, "tokenizer {}: id {} at position {} is outside the vocab of {}", path_,
              ids[i], i, n);
  std::string out;
  auto st = sp_->Decode(ids, &out);
  SKY_CHECK(st.ok(), "tokenizer {}: decode failed: {}", path_, st.ToString());
  return out;
}

std::string Tokenizer::decode_piece(int32_t id) const {
  if (hf_) return hf_->decode_piece(id);
  const std::string& piece = id_to_piece(id);
  if (sp_->IsControl(id)) return "";
  if (sp_->IsUnknown(id)) return " \xe2\x81\x87 ";  // SentencePiece's default unk surface " ⁇ "
  if (sp_->IsByte(id)) return std::string(1, char(std::stoi(piece.substr(3, 2), nullptr, 16)));  // "<0xAB>"
  std::string s;
  for (size_t i = 0; i < piece.size();) {
    if (piece.compare(i, kSpaceSymbol.size(), kSpaceSymbol) == 0) {
      s += ' ';
      i += kSpaceSymbol.size();
    } else {
      s += piece[i++];
    }
  }
  return s;
}

const std::string& Tokenizer::id_to_piece(int32_t id) const {
  if (hf_) return hf_->id_to_piece(id);
  SKY_CHECK(id >= 0 && id < vocab_size(), "tokenizer {}: id {} is outside the vocab of {}", path_, id, vocab_size());
  return sp_->IdToPiece(id);
}

float Tokenizer::score(int32_t id) const {
  id_to_piece(id);  // range check
  if (hf_) return 0.0f;
  return sp_->GetScore(id);
}

Tokenizer::PieceType Tokenizer::piece_type(int32_t id) const {
  if (hf_) return hf_->piece_type(id);
  id_to_piece(id);  // range check
  if (sp_->IsUnknown(id)) return PieceType::Unknown;
  if (sp_->IsControl(id)) return PieceType::Control;
  if (sp_->IsUnused(id)) return PieceType::Unused;
  if (sp_->IsByte(id)) return PieceType::Byte;
  return PieceType::Normal;
}

int Tokenizer::vocab_size() const { return hf_ ? hf_->vocab_size() : sp_->GetPieceSize(); }
int Tokenizer::bos_id() const { return hf_ ? hf_->bos_id() : sp_->bos_id(); }
int Tokenizer::eos_id() const { return hf_ ? hf_->eos_id() : sp_->eos_id(); }
int Tokenizer::unk_id() const { return hf_ ? hf_->unk_id() : sp_->unk_id(); }
int Tokenizer::pad_id() const { return hf_ ? hf_->pad_id() : sp_->pad_id(); }

StreamDecoder::StreamDecoder(const Tokenizer& tok, bool at_start) : tok_(&tok), strip_space_(at_start) {}

std::string StreamDecoder::push(int32_t id) {
  std::string s = tok_->decode_piece(id);
  // Like decode(): the first visible piece loses the space the dummy prefix put in front of it.
  if (strip_space_ && !s.empty()) {
    if (tok_->adds_dummy_prefix() && s[0] == ' ' && tok_->id_to_piece(id).starts_with(kSpaceSymbol)) s.erase(0, 1);
    strip_space_ = false;
  }
  pending_ += s;

  // Emit whole characters; a truncated one at the end waits, a malformed byte becomes U+FFFD as in
  // SentencePiece's own decoding.
  std::string out;
  size_t i = 0;
  const size_t n = pending_.size();
  auto cont = [&](size_t k) { return (static_cast<unsigned char>(pending_[k]) & 0xC0) == 0x80; };
  while (i < n) {
    unsigned char c = pending_[i];
    size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    size_t have = 1;
    while (have < len && i + have < n && cont(i + have)) have++;
    if (len != 0 && have == len) {
      out.append(pending_, i, len);
      i += len;
    } else if (len != 0 && i + have == n) {
      break;  // incomplete so far
    } else {
      out += "\xef\xbf\xbd";
      i++;
    }
  }
  pending_.erase(0, i);
  return out;
}

std::string StreamDecoder::flush() {
  std::string s = std::move(pending_);
  pending_.clear();
  return s;
}

DocSeparator parse_doc_separator(const std::string& s) {
  if (s == "line") return DocSeparator::Line;
  if (s == "blank") return DocSeparator::Blank;
  if (s == "percent") return DocSeparator::Percent;
  if (s == "file") return DocSeparator::File;
  fail("document separator '{}' is not one of: line, blank, percent, file", s);
}

namespace {

// Calls doc(text) for each non-blank document of one file and consumed(n) as bytes are read.
void read_documents(const std::string& path, DocSeparator sep, const std::function<void(const std::string&)>& doc,
                    const std::function<void(uint64_t)>& consumed) {
  std::ifstream in(path, std::ios::binary);
  SKY_CHECK(in.good(), "tokenize: cannot read {}", path);
  if (sep == DocSeparator::File) {
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    consumed(text.size());
    while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) text.pop_back();
    if (!is_blank(text)) doc(text);
    return;
  }
  std::string line, cur;
  bool started = false;
  auto finish = [&] {
    if (started && !is_blank(cur)) doc(cur);
    cur.clear();
    started = false;
  };
  while (std::getline(in, line)) {
    consumed(line.size() + 1);
    strip_cr(line);
    if (sep == DocSeparator::Line) {
      cur = line;
      started = true;
      finish();
      continue;
    }
    if (sep == DocSeparator::Blank ? is_blank(line) : line == "%") {
      finish();
    } else {
      if (started) cur += '\n';
      cur += line;
      started = true;
    }
  }
  SKY_CHECK(in.eof(), "tokenize: read error in {}", path);
  finish();
}

}  // namespace

TokenizeStats tokenize_files(const Tokenizer& tok, const std::vector<std::string>& text_files,
                             const std::string& out_path, const TokenizeOptions& opt, const ProgressFn& progress) {
  SKY_CHECK(!text_files.empty(), "tokenize: no text files given");
  SKY_CHECK(!opt.bos || tok.bos_id() >= 0, "tokenize: tokenizer {} has no bos id", tok.path());
  SKY_CHECK(!opt.eos || tok.eos_id() >= 0, "tokenize: tokenizer {} has no eos id", tok.path());
  uint64_t total = 0;
  for (const auto& f : text_files) {
    check_readable(f, "tokenize");
    total += fs::file_size(f);
  }

  TokenizeStats stats;
  TokenFileWriter writer(out_path);
  std::vector<uint32_t> buf;
  uint64_t done = 0, reported = 0;
  auto report = [&](bool force) {
    if (progress && (force || done - reported >= (1u << 20))) {
      progress(std::min(done, total), total);
      reported = done;
    }
  };
  report(true);
  for (const auto& f : text_files) {
    read_documents(
        f, opt.separator,
        [&](const std::string& text) {
          if (opt.bos) buf.push_back(uint32_t(tok.bos_id()));
          for (int32_t id : tok.encode(text)) buf.push_back(uint32_t(id));
          if (opt.eos) buf.push_back(uint32_t(tok.eos_id()));
          stats.documents++;
          if (buf.size() >= (1u << 20)) {
            writer.append(buf);
            buf.clear();
          }
        },
        [&](uint64_t n) {
          done += n;
          report(false);
        });
  }
  writer.append(buf);
  stats.tokens = writer.count();
  stats.bytes = total;
  SKY_CHECK(stats.tokens > 0, "tokenize: {} text files hold no documents", text_files.size());
  writer.commit();
  done = total;
  report(true);
  return stats;
}

}  // namespace sky
