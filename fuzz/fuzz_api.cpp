// The body of POST /v1/completions and /v1/chat/completions: parse_json_body, then both request
// parsers, for a model without a tokenizer (token-id prompts only) and one with a small
// SentencePiece tokenizer (text prompts, chat). Expected: a request, or ApiError (an HTTP error).
// Findings besides crashes and sanitizer reports: an accepted request the engine could not run as
// given (an id outside the vocab, a prompt or max_tokens beyond the context, a sampling value out
// of range, an empty stop string).
#include <cmath>
#include <cstdint>
#include <string>

#include "fuzz_util.h"
#include "infer/api.h"
#include "io/tokenizer.h"

namespace {

sky::ApiLimits limits(const sky::Tokenizer* tok) {
  sky::ApiLimits l;
  l.model_name = "fuzz";
  l.tok = tok;
  l.vocab_size = tok ? tok->vocab_size() : 256;
  l.context = 64;
  l.max_prompt_tokens = 48;
  l.max_tokens_limit = 40;
  return l;
}

void check(const sky::GenRequest& r, const sky::ApiLimits& l) {
  const int P = int(r.prompt.size());
  FUZZ_CHECK(P > 0 && P <= l.max_prompt_tokens, "prompt of %d tokens", P);
  for (int32_t id : r.prompt) FUZZ_CHECK(id >= 0 && id < l.vocab_size, "prompt id %d", id);
  FUZZ_CHECK(r.gen.max_tokens >= 1 && r.gen.max_tokens <= l.max_tokens_limit && P + r.gen.max_tokens <= l.context,
             "max_tokens %d with a prompt of %d", r.gen.max_tokens, P);
  const sky::SamplerOptions& s = r.gen.sampling;
  FUZZ_CHECK(s.temperature >= 0 && s.temperature <= 2 && s.top_p > 0 && s.top_p <= 1 && s.top_k >= 0,
             "sampling t=%g p=%g k=%d", s.temperature, s.top_p, s.top_k);
  FUZZ_CHECK(std::isfinite(r.gen.repetition_penalty) && r.gen.repetition_penalty > 0, "repetition_penalty %g",
             r.gen.repetition_penalty);
  for (const std::string& stop : r.stop) FUZZ_CHECK(!stop.empty(), "empty stop string");
  FUZZ_CHECK(!r.chat || (!r.stop.empty() && r.stop.back() == sky::kChatStop), "chat without its stop string");
  FUZZ_CHECK(r.stream || !r.include_usage, "include_usage without stream");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const sky::Tokenizer tok = sky::Tokenizer::load(SKYMOE_FUZZ_TOKENIZER);
  static const sky::ApiLimits plain = limits(nullptr), with_tok = limits(&tok);
  nlohmann::json body;
  try {
    body = sky::parse_json_body(std::string(reinterpret_cast<const char*>(data), size));
  } catch (const sky::ApiError& e) {
    (void)sky::dump_json(sky::error_body(e));
    return 0;
  }
  (void)sky::dump_json(body);  // the server echoes parts of requests in errors; this must not throw
  for (const sky::ApiLimits* l : {&plain, &with_tok}) {
    for (bool chat : {false, true}) {
      try {
        const sky::GenRequest r = chat ? sky::parse_chat_request(body, *l) : sky::parse_completion_request(body, *l);
        check(r, *l);
      } catch (const sky::ApiError& e) {
        FUZZ_CHECK(e.status >= 400 && e.status < 500, "status %d for a bad request", e.status);
        (void)sky::dump_json(sky::error_body(e));
      }
    }
  }
  return 0;
}
