#include "io/json_input.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <iterator>

#include "core/error.h"

namespace sky {

using json = nlohmann::json;

namespace {

template <class J, class OnEvent>
J parse_bounded(const char* begin, const char* end, const std::string& what, const OnEvent& on_event) {
  auto cb = [&](int depth, typename J::parse_event_t ev, J& parsed) {
    if ((ev == J::parse_event_t::object_start || ev == J::parse_event_t::array_start) && depth >= kMaxJsonDepth)
      fail("{}: JSON nested deeper than {} levels", what, kMaxJsonDepth);
    on_event(depth, ev, parsed);
    return true;
  };
  try {
    return J::parse(begin, end, cb);
  } catch (const typename J::exception& e) {  // parse errors, and numbers such as 1e999 (out_of_range)
    fail("{}: not valid JSON: {}", what, e.what());
  }
}

std::string read_file(const std::string& path) {
  struct stat st {};  // before opening: opening a FIFO would block until a writer came
  if (::stat(path.c_str(), &st) == 0 && !S_ISREG(st.st_mode)) fail("cannot read {}: not a regular file", path);
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot open {}: {}", path, std::strerror(errno));
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) fail("cannot read {}", path);
  return text;
}

}  // namespace

json parse_json(const char* begin, const char* end, const std::string& what, const JsonEvent& on_event) {
  return parse_bounded<json>(begin, end, what, [&](int depth, json::parse_event_t ev, json& parsed) {
    if (on_event) on_event(depth, ev, parsed);
  });
}

json parse_json(const std::string& text, const std::string& what) {
  return parse_json(text.data(), text.data() + text.size(), what);
}

json read_json_file(const std::string& path) { return parse_json(read_file(path), path); }

nlohmann::ordered_json parse_ordered_json(const std::string& text, const std::string& what) {
  return parse_bounded<nlohmann::ordered_json>(text.data(), text.data() + text.size(), what, [](auto&&...) {});
}

nlohmann::ordered_json read_ordered_json_file(const std::string& path) { return parse_ordered_json(read_file(path), path); }

}  // namespace sky
