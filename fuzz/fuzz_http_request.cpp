// The HTTP/1.1 request parser of `skymoe serve`'s front (infer/http_front.h), on raw bytes as a
// client sends them: heads, Content-Length and chunked bodies, pipelined requests.
// Findings besides crashes and sanitizer reports: a request said to use more bytes than it was
// given, a body over the limit, a path that is not the target's prefix, an error status outside
// the documented set, a parse that changes when the bytes after the request change (pipelining),
// and a log rendering that still holds a control byte.
#include <cstdint>
#include <string>
#include <string_view>

#include "fuzz_util.h"
#include "infer/http_front.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using sky::http::ParseResult;
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  sky::http::ParseLimits lim;
  lim.max_head_bytes = 2048;  // small limits: the fuzzer reaches them
  lim.max_body_bytes = 4096;
  const ParseResult r = sky::http::parse_request(in, lim);
  if (r.status == ParseResult::kError) {
    const int s = r.error_status;
    FUZZ_CHECK(s == 400 || s == 413 || s == 417 || s == 431 || s == 501 || s == 505, "error status %d", s);
    FUZZ_CHECK(!r.error.empty(), "error without a message");
  }
  if (r.status == ParseResult::kDone) {
    FUZZ_CHECK(r.consumed > 0 && r.consumed <= size, "consumed %zu of %zu", r.consumed, size);
    FUZZ_CHECK(r.req.body.size() <= lim.max_body_bytes, "body of %zu bytes", r.req.body.size());
    FUZZ_CHECK(r.req.target.compare(0, r.req.path.size(), r.req.path) == 0, "path not a prefix of the target");
    FUZZ_CHECK(!r.req.method.empty() && !r.req.target.empty() && r.req.target[0] == '/', "empty method or target");
    // The request alone parses the same, and so does it followed by other bytes (a pipelined one).
    const ParseResult alone = sky::http::parse_request(in.substr(0, r.consumed), lim);
    FUZZ_CHECK(alone.status == ParseResult::kDone && alone.consumed == r.consumed && alone.req.body == r.req.body,
               "the request alone parses differently");
    const std::string more = std::string(in.substr(0, r.consumed)) + "GET / HTTP/1.1\r\n";
    const ParseResult piped = sky::http::parse_request(more, lim);
    FUZZ_CHECK(piped.status == ParseResult::kDone && piped.consumed == r.consumed, "pipelined bytes change the parse");
    for (unsigned char c : sky::http::log_safe(r.req.target)) FUZZ_CHECK(c >= 0x20 && c < 0x7f, "log byte %d", c);
    sky::http::percent_decode(r.req.path);
  }
  if (r.status == ParseResult::kIncomplete && size > 0) {
    // Less of the same bytes is never a complete request either.
    const ParseResult shorter = sky::http::parse_request(in.substr(0, size - 1), lim);
    FUZZ_CHECK(shorter.status != ParseResult::kDone, "a prefix of an incomplete request is complete");
  }
  return 0;
}
