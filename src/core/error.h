#pragma once
// One error type for everything a user can get wrong; the message names the file, field or value.
#include <fmt/format.h>
#include <stdexcept>
#include <string>

namespace sky {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

template <class... A>
[[noreturn]] void fail(fmt::format_string<A...> f, A&&... a) {
  throw Error(fmt::format(f, std::forward<A>(a)...));
}

}  // namespace sky

#define SKY_CHECK(cond, ...)        \
  do {                              \
    if (!(cond)) ::sky::fail(__VA_ARGS__); \
  } while (0)
