#include "io/json_input.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <iterator>

#include "core/error.h"

namespace sky {

using json = nlohmann::json;

json parse_json(const char* begin, const char* end, const std::string& what, const JsonEvent& on_event) {
  auto cb = [&](int depth, json::parse_event_t ev, json& parsed) {
    if ((ev == json::parse_event_t::object_start || ev == json::parse_event_t::array_start) && depth >= kMaxJsonDepth)
      fail("{}: JSON nested deeper than {} levels", what, kMaxJsonDepth);
    if (on_event) on_event(depth, ev, parsed);
    return true;
  };
  try {
    return json::parse(begin, end, cb);
  } catch (const json::exception& e) {  // parse errors, and numbers such as 1e999 (out_of_range)
    fail("{}: not valid JSON: {}", what, e.what());
  }
}

json parse_json(const std::string& text, const std::string& what) {
  return parse_json(text.data(), text.data() + text.size(), what);
}

json read_json_file(const std::string& path) {
  struct stat st {};  // before opening: opening a FIFO would block until a writer came
  if (::stat(path.c_str(), &st) == 0 && !S_ISREG(st.st_mode)) fail("cannot read {}: not a regular file", path);
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot open {}: {}", path, std::strerror(errno));
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) fail("cannot read {}", path);
  return parse_json(text, path);
}

}  // namespace sky
