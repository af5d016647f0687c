// Splits a template into text and tag tokens the way jinja2's lexer does under transformers'
// settings: trim_blocks (a block or comment tag eats the newline after it), lstrip_blocks (spaces
// and tabs before a block or comment tag alone at the start of its line go), "-" on a tag strips
// all whitespace on that side, "+" turns lstrip/trim off for that side.
#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "io/jinja/ast.h"
#include "io/jinja/template.h"
#include "io/jinja/utf8.h"

namespace sky::jinja {

namespace {

bool space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }
bool name_start(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }
bool tag_char(char c) { return c == '{' || c == '%' || c == '#'; }
bool digit(char c) { return c >= '0' && c <= '9'; }
bool name_char(char c) { return name_start(c) || digit(c); }

// Python's string-literal escapes (jinja decodes literals with "unicode-escape").
std::string unescape(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); i++) {
    if (s[i] != '\\' || i + 1 == s.size()) {
      out += s[i];
      continue;
    }
    const char c = s[++i];
    auto hex = [&](size_t n) -> bool {
      if (i + n >= s.size()) return false;
      uint32_t cp = 0;
      for (size_t k = 1; k <= n; k++) {
        const char h = s[i + k];
        int d = digit(h) ? h - '0' : (h >= 'a' && h <= 'f') ? h - 'a' + 10 : (h >= 'A' && h <= 'F') ? h - 'A' + 10 : -1;
        if (d < 0) return false;
        cp = cp * 16 + uint32_t(d);
      }
      if (cp > 0x10FFFF) return false;
      utf8_append(out, cp);
      i += n;
      return true;
    };
    switch (c) {
      case 'n': out += '\n'; break;
      case 't': out += '\t'; break;
      case 'r': out += '\r'; break;
      case '\\': out += '\\'; break;
      case '\'': out += '\''; break;
      case '"': out += '"'; break;
      case 'a': out += '\a'; break;
      case 'b': out += '\b'; break;
      case 'f': out += '\f'; break;
      case 'v': out += '\v'; break;
      case '\n': break;  // a backslash-newline continues the line
      case 'x':
        if (!hex(2)) out += "\\x";
        break;
      case 'u':
        if (!hex(4)) out += "\\u";
        break;
      case 'U':
        if (!hex(8)) out += "\\U";
        break;
      default:
        if (c >= '0' && c <= '7') {  // up to three octal digits
          uint32_t cp = 0;
          size_t k = 0;
          for (; k < 3 && i + k < s.size() && s[i + k] >= '0' && s[i + k] <= '7'; k++) cp = cp * 8 + uint32_t(s[i + k] - '0');
          utf8_append(out, cp);
          i += k - 1;
        } else {
          out += '\\';  // unknown escapes stay as written
          out += c;
        }
    }
  }
  return out;
}

class Lexer {
 public:
  Lexer(std::string_view source, const std::string& name) : name_(name) {
    // Newlines become "\n", and one trailing newline goes (keep_trailing_newline=False).
    src_.reserve(source.size());
    for (size_t i = 0; i < source.size(); i++) {
      if (source[i] == '\r') {
        src_ += '\n';
        if (i + 1 < source.size() && source[i + 1] == '\n') i++;
      } else {
        src_ += source[i];
      }
    }
    if (!src_.empty() && src_.back() == '\n') src_.pop_back();
  }

  std::vector<Token> run() {
    while (pos_ < src_.size()) {
      size_t at = pos_;
      while ((at = src_.find('{', at)) != std::string::npos && at + 1 < src_.size() && !tag_char(src_[at + 1])) at++;
      if (at == std::string::npos || at + 1 >= src_.size()) {
        text(src_.substr(pos_));
        break;
      }
      const char kind = src_[at + 1];
      const char mod = at + 2 < src_.size() && (src_[at + 2] == '-' || src_[at + 2] == '+') ? src_[at + 2] : 0;
      std::string before = src_.substr(pos_, at - pos_);
      if (mod == '-') {
        while (!before.empty() && space(before.back())) before.pop_back();
      } else if (mod != '+' && kind != '{') {
        // lstrip_blocks: only when the tag starts its line (or the template).
        const size_t l = before.rfind('\n') + 1;
        const bool line_start = l > 0 || pos_ == 0 || src_[pos_ - 1] == '\n';
        if (line_start && before.find_first_not_of(" \t\f\v", l) == std::string::npos) before.resize(l);
      }
      text(std::move(before));
      advance(at);
      const size_t body = at + 2 + (mod ? 1 : 0);
      if (kind == '#') {
        comment(body);
        continue;
      }
      push(kind == '{' ? Token::VarBegin : Token::BlockBegin);
      advance(body);
      tag(kind == '{');
    }
    push(Token::Eof);
    return std::move(out_);
  }

 private:
  [[noreturn]] void fail(const std::string& what) { throw TemplateError(name_, line_, what); }

  void advance(size_t to) {
    for (size_t i = pos_; i < to; i++) line_ += src_[i] == '\n';
    pos_ = to;
  }

  void push(Token::Type t, std::string s = "") {
    Token tok;
    tok.type = t;
    tok.s = std::move(s);
    tok.line = line_;
    out_.push_back(std::move(tok));
  }

  void text(std::string s) {
    if (!s.empty()) push(Token::Text, std::move(s));
    // advance() over the text happens when the caller moves pos_ past it
  }

  // After a block or comment tag's end: "-" strips all whitespace, trim_blocks one newline.
  size_t after_end(size_t end, char mod) {
    if (mod == '-')
      while (end < src_.size() && space(src_[end])) end++;
    else if (mod != '+' && end < src_.size() && src_[end] == '\n')
      end++;
    return end;
  }

  void comment(size_t body) {
    const size_t end = src_.find("#}", body);
    if (end == std::string::npos) fail("missing end of comment tag");
    const char mod = end > body && (src_[end - 1] == '-' || src_[end - 1] == '+') ? src_[end - 1] : 0;
    advance(after_end(end + 2, mod));
  }

  void tag(bool var) {
    int depth = 0;  // inside brackets "}}" and "%}" are operators, as in jinja2
    for (;;) {
      while (pos_ < src_.size() && space(src_[pos_])) advance(pos_ + 1);
      if (pos_ >= src_.size()) fail(var ? "unexpected end of template: missing '}}'" : "unexpected end of template: missing '%}'");
      if (depth == 0) {
        std::string_view rest(src_.data() + pos_, src_.size() - pos_);
        const char* close = var ? "}}" : "%}";
        const char mod = (rest[0] == '-' || (!var && rest[0] == '+')) && rest.substr(1, 2) == close ? rest[0] : 0;
        if (mod || rest.substr(0, 2) == close) {
          push(var ? Token::VarEnd : Token::BlockEnd);
          const size_t end = pos_ + 2 + (mod ? 1 : 0);
          advance(var ? (mod == '-' ? after_end(end, '-') : end) : after_end(end, mod));
          return;
        }
      }
      const char c = src_[pos_];
      if (name_start(c)) {
        size_t e = pos_;
        while (e < src_.size() && name_char(src_[e])) e++;
        push(Token::Name, src_.substr(pos_, e - pos_));
        advance(e);
      } else if (digit(c)) {
        number();
      } else if (c == '\'' || c == '"') {
        size_t e = pos_ + 1;
        while (e < src_.size() && src_[e] != c) e += src_[e] == '\\' ? 2 : 1;
        if (e >= src_.size()) fail("unterminated string");
        push(Token::Str, unescape(std::string_view(src_).substr(pos_ + 1, e - pos_ - 1)));
        advance(e + 1);
      } else {
        static const char* const two[] = {"//", "**", "==", "!=", "<=", ">="};
        std::string op(1, c);
        for (const char* t : two)
          if (src_.compare(pos_, 2, t) == 0) op = t;
        if (op.size() == 1 && (c == 0 || !std::strchr("+-*/%~<>=.,:|()[]{}", c))) fail(std::string("unexpected character '") + c + "'");
        if (op == "(" || op == "[" || op == "{") depth++;
        if ((op == ")" || op == "]" || op == "}") && depth > 0) depth--;
        push(Token::Op, op);
        advance(pos_ + op.size());
      }
    }
  }

  // jinja2's numbers: digits with "_" separators; a float needs digits after its "." or an
  // exponent, and is never read right after a "." (x.0.1 is two item accesses).
  void number() {
    auto digits = [&](size_t e) {
      while (e < src_.size() && (digit(src_[e]) || (src_[e] == '_' && e + 1 < src_.size() && digit(src_[e + 1])))) e++;
      return e;
    };
    size_t e = digits(pos_);
    bool is_float = false;
    const bool after_dot = pos_ > 0 && src_[pos_ - 1] == '.';
    if (!after_dot) {
      if (e + 1 < src_.size() && src_[e] == '.' && digit(src_[e + 1])) e = digits(e + 1), is_float = true;
      if (e < src_.size() && (src_[e] == 'e' || src_[e] == 'E')) {
        size_t x = e + 1;
        if (x < src_.size() && (src_[x] == '+' || src_[x] == '-')) x++;
        if (x < src_.size() && digit(src_[x])) e = digits(x), is_float = true;
      }
    }
    std::string lit;
    for (size_t i = pos_; i < e; i++)
      if (src_[i] != '_') lit += src_[i];
    if (is_float) {
      push(Token::Float);
      out_.back().f = std::strtod(lit.c_str(), nullptr);
    } else {
      errno = 0;
      const long long v = std::strtoll(lit.c_str(), nullptr, 10);
      if (errno == ERANGE) fail("integer literal " + lit + " is too large");
      push(Token::Int);
      out_.back().i = v;
    }
    advance(e);
  }

  std::string src_;
  const std::string& name_;
  size_t pos_ = 0;
  int line_ = 1;
  std::vector<Token> out_;
};

}  // namespace

std::vector<Token> lex(std::string_view source, const std::string& name) { return Lexer(source, name).run(); }

}  // namespace sky::jinja
