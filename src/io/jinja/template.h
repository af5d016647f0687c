#pragma once
// A Jinja2 subset written for Hugging Face chat templates, rendering them exactly as transformers'
// apply_chat_template does (jinja2's sandbox with trim_blocks and lstrip_blocks, no trailing
// newline kept, its own tojson). docs/serving.md lists what is supported.
#include <memory>
#include <string>
#include <string_view>

#include "core/error.h"
#include "io/jinja/value.h"

namespace sky::jinja {

// A syntax error, a runtime error (undefined attribute, bad types) or raise_exception(msg). The
// message is "<name>, line <n>: <what>"; for raise_exception <what> is the template's own message.
struct TemplateError : Error {
  TemplateError(const std::string& name, int line, const std::string& what);
  int line;
  std::string message;  // <what> alone, without the template's name (e.g. for an HTTP client)
};

struct Program;

class Template {
 public:
  // Parses `source`; `name` (e.g. the file) starts every error message. Throws TemplateError.
  Template(std::string_view source, std::string name);
  // Renders with these top-level variables (and the globals range, namespace, dict,
  // raise_exception, strftime_now). Throws TemplateError.
  std::string render(const Items& vars) const;
  const std::string& name() const;

 private:
  std::shared_ptr<const Program> prog_;
};

}  // namespace sky::jinja
