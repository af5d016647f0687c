// jinja2's filters and tests, Python's str/dict/list methods and the globals transformers adds,
// each with the semantics of the Python original (see the fixtures in tests/data/chat_templates).
#include "io/jinja/builtins.h"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <ctime>
#include <optional>
#include <unordered_map>

#include "io/jinja/utf8.h"

namespace sky::jinja {

namespace {

// Python's argument binding for a builtin with these parameter names.
class Params {
 public:
  Params(Args& a, const char* what, std::initializer_list<const char*> names) : a_(a), names_(names) {
    if (a.pos.size() > names_.size())
      throw Problem(fmt::format("{}() takes at most {} arguments ({} given)", what, names_.size(), a.pos.size()));
    for (const auto& kv : a.kw) {
      auto it = std::find_if(names_.begin(), names_.end(), [&](const char* n) { return kv.first == n; });
      if (it == names_.end()) throw Problem(fmt::format("{}() got an unexpected keyword argument '{}'", what, kv.first));
      if (size_t(it - names_.begin()) < a.pos.size())
        throw Problem(fmt::format("{}() got multiple values for argument '{}'", what, kv.first));
    }
  }
  const Value* get(size_t i) const {
    if (i < a_.pos.size()) return &a_.pos[i];
    for (const auto& kv : a_.kw)
      if (kv.first == names_[i]) return &kv.second;
    return nullptr;
  }
  Value get(size_t i, Value def) const {
    const Value* v = get(i);
    return v ? *v : def;
  }

 private:
  Args& a_;
  std::vector<const char*> names_;
};

const std::string& need_str(const Value& v, const char* what) {
  if (!v.is(Kind::String)) throw Problem(fmt::format("{} must be a string, not '{}'", what, type_name(v)));
  return v.str();
}

int64_t need_int(const Value& v, const char* what) {
  if (v.kind != Kind::Int && v.kind != Kind::Bool)
    throw Problem(fmt::format("{} must be an integer, not '{}'", what, type_name(v)));
  return v.as_int();
}

[[noreturn]] void bad_operands(const std::string& op, const Value& a, const Value& b);

// ---- strings -----------------------------------------------------------------------------------

char ascii_upper(char c) { return c >= 'a' && c <= 'z' ? char(c - 32) : c; }
char ascii_lower(char c) { return c >= 'A' && c <= 'Z' ? char(c + 32) : c; }
bool ascii_alpha(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }

std::string upper(std::string s) {
  for (char& c : s) c = ascii_upper(c);
  return s;
}
std::string lower(std::string s) {
  for (char& c : s) c = ascii_lower(c);
  return s;
}

// Python's str.title(): a letter after a non-letter is upper-cased, every other letter lowered.
std::string py_title(std::string s) {
  bool prev_cased = false;
  for (char& c : s) {
    const bool cased = ascii_alpha(c);
    c = cased ? (prev_cased ? ascii_lower(c) : ascii_upper(c)) : c;
    prev_cased = cased;
  }
  return s;
}

std::string capitalize(std::string s) {
  for (size_t k = 0; k < s.size(); k++) s[k] = k ? ascii_lower(s[k]) : ascii_upper(s[k]);
  return s;
}

// jinja2's title filter differs from str.title(): words start only after whitespace, "-" and
// opening brackets, so "it's" stays "It's".
std::string jinja_title(const std::string& s) {
  std::string out = s;
  bool start = true;
  for (char& c : out) {
    const bool sep = c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v' || c == '-' ||
                     c == '(' || c == '{' || c == '[' || c == '<';
    if (sep) {
      start = true;
      continue;
    }
    c = start ? ascii_upper(c) : ascii_lower(c);
    start = false;
  }
  return out;
}

// str.strip family: `chars` null strips Python whitespace, else any of its characters.
std::string strip(const std::string& s, const Value* chars, bool left, bool right) {
  std::vector<uint32_t> set;
  const bool ws = !chars || chars->is(Kind::None);
  if (!ws) {
    const std::string& c = need_str(*chars, "strip() argument");
    for (size_t i = 0; i < c.size();) {
      size_t n;
      set.push_back(utf8_decode(c, i, &n));
      i += n;
    }
  }
  auto drop = [&](uint32_t cp) { return ws ? py_space(cp) : std::find(set.begin(), set.end(), cp) != set.end(); };
  const auto at = char_starts(s);
  size_t b = 0, e = at.size() - 1;  // character indexes
  auto cp_at = [&](size_t k) {
    size_t n;
    return utf8_decode(s, at[k], &n);
  };
  if (left)
    while (b < e && drop(cp_at(b))) b++;
  if (right)
    while (e > b && drop(cp_at(e - 1))) e--;
  return s.substr(at[b], at[e] - at[b]);
}

std::vector<std::string> split(const std::string& s, const Value* sep_v, int64_t maxsplit, bool from_right) {
  std::vector<std::string> out;
  if (sep_v && !sep_v->is(Kind::None)) {
    const std::string& sep = need_str(*sep_v, "separator");
    if (sep.empty()) throw Problem("empty separator");
    if (!from_right) {
      size_t pos = 0, hit;
      while ((maxsplit < 0 || int64_t(out.size()) < maxsplit) && (hit = s.find(sep, pos)) != std::string::npos) {
        out.push_back(s.substr(pos, hit - pos));
        pos = hit + sep.size();
      }
      out.push_back(s.substr(pos));
    } else {
      size_t end = s.size(), hit;
      while ((maxsplit < 0 || int64_t(out.size()) < maxsplit) && end >= sep.size() &&
             (hit = s.rfind(sep, end - sep.size())) != std::string::npos) {
        out.push_back(s.substr(hit + sep.size(), end - hit - sep.size()));
        end = hit;
      }
      out.push_back(s.substr(0, end));
      std::reverse(out.begin(), out.end());
    }
    return out;
  }
  // Runs of whitespace; the rest after maxsplit splits keeps its inner (and far-end) whitespace.
  const auto at = char_starts(s);
  const size_t nch = at.size() - 1;
  auto is_ws = [&](size_t k) {
    size_t n;
    return py_space(utf8_decode(s, at[k], &n));
  };
  if (!from_right) {
    size_t k = 0;
    for (;;) {
      while (k < nch && is_ws(k)) k++;
      if (k == nch) break;
      if (maxsplit >= 0 && int64_t(out.size()) == maxsplit) {
        out.push_back(s.substr(at[k]));
        break;
      }
      size_t e = k;
      while (e < nch && !is_ws(e)) e++;
      out.push_back(s.substr(at[k], at[e] - at[k]));
      k = e;
    }
  } else {
    size_t k = nch;
    for (;;) {
      while (k > 0 && is_ws(k - 1)) k--;
      if (k == 0) break;
      if (maxsplit >= 0 && int64_t(out.size()) == maxsplit) {
        out.push_back(s.substr(0, at[k]));
        break;
      }
      size_t b = k;
      while (b > 0 && !is_ws(b - 1)) b--;
      out.push_back(s.substr(at[b], at[k] - at[b]));
      k = b;
    }
    std::reverse(out.begin(), out.end());
  }
  return out;
}

// str.splitlines(): every line ending Python knows, ends dropped.
std::vector<std::string> splitlines(const std::string& s) {
  std::vector<std::string> out;
  size_t start = 0;
  for (size_t i = 0; i < s.size();) {
    size_t n;
    const uint32_t cp = utf8_decode(s, i, &n);
    const bool brk = cp == '\n' || cp == '\r' || cp == 0x0b || cp == 0x0c || cp == 0x1c || cp == 0x1d || cp == 0x1e ||
                     cp == 0x85 || cp == 0x2028 || cp == 0x2029;
    if (brk) {
      out.push_back(s.substr(start, i - start));
      if (cp == '\r' && i + 1 < s.size() && s[i + 1] == '\n') n++;
      start = i + n;
    }
    i += n;
  }
  if (start < s.size()) out.push_back(s.substr(start));
  return out;
}

std::string replace(const std::string& s, const std::string& from, const std::string& to, int64_t count) {
  std::string out;
  if (from.empty()) {  // Python inserts `to` before every character and at the end
    const auto at = char_starts(s);
    int64_t done = 0;
    for (size_t k = 0; k + 1 < at.size(); k++) {
      if (count < 0 || done < count) out += to, done++;
      out.append(s, at[k], at[k + 1] - at[k]);
    }
    if (count < 0 || done < count) out += to;
    return out;
  }
  size_t pos = 0, hit;
  int64_t done = 0;
  while ((count < 0 || done < count) && (hit = s.find(from, pos)) != std::string::npos) {
    out.append(s, pos, hit - pos);
    out += to;
    pos = hit + from.size();
    done++;
    if (out.size() > kMaxStringBytes) throw Problem("string too long");
  }
  out.append(s, pos);
  return out;
}

bool starts_or_ends(const std::string& s, const Value& what, bool start) {
  auto one = [&](const Value& v) {
    const std::string& p = need_str(v, start ? "startswith() argument" : "endswith() argument");
    return s.size() >= p.size() && s.compare(start ? 0 : s.size() - p.size(), p.size(), p) == 0;
  };
  if (what.is(Kind::List)) {
    for (const auto& v : what.lst().items)
      if (one(v)) return true;
    return false;
  }
  return one(what);
}

int64_t char_index(const std::string& s, size_t byte) {
  if (byte == std::string::npos) return -1;
  int64_t k = 0;
  for (size_t i = 0; i < byte;) {
    size_t n;
    utf8_decode(s, i, &n);
    i += n;
    k++;
  }
  return k;
}

Value strings(const std::vector<std::string>& v) {
  std::vector<Value> out;
  out.reserve(v.size());
  for (const auto& s : v) out.push_back(Value::string(s));
  return Value::list(std::move(out));
}

bool all_chars(const std::string& s, bool (*pred)(char)) {
  if (s.empty()) return false;
  for (char c : s)
    if (!pred(c)) return false;
  return true;
}

// Python's str methods (the ones templates call; ASCII case mapping).
Value str_method(const std::string& s, const std::string& m, Args& a) {
  if (m == "strip" || m == "lstrip" || m == "rstrip") {
    Params p(a, m.c_str(), {"chars"});
    return Value::string(strip(s, p.get(0), m != "rstrip", m != "lstrip"));
  }
  if (m == "split" || m == "rsplit") {
    Params p(a, m.c_str(), {"sep", "maxsplit"});
    return strings(split(s, p.get(0), need_int(p.get(1, Value::integer(-1)), "maxsplit"), m == "rsplit"));
  }
  if (m == "splitlines") {
    Params p(a, m.c_str(), {});
    return strings(splitlines(s));
  }
  if (m == "startswith" || m == "endswith") {
    Params p(a, m.c_str(), {"prefix"});
    if (!p.get(0)) throw Problem(m + "() takes exactly one argument");
    return Value::boolean(starts_or_ends(s, *p.get(0), m == "startswith"));
  }
  if (m == "upper" || m == "lower" || m == "title" || m == "capitalize") {
    Params p(a, m.c_str(), {});
    return Value::string(m == "upper" ? upper(s) : m == "lower" ? lower(s) : m == "title" ? py_title(s) : capitalize(s));
  }
  if (m == "replace") {
    Params p(a, m.c_str(), {"old", "new", "count"});
    if (!p.get(0) || !p.get(1)) throw Problem("replace() takes at least 2 arguments");
    return Value::string(replace(s, need_str(*p.get(0), "replace() argument"), need_str(*p.get(1), "replace() argument"),
                                 need_int(p.get(2, Value::integer(-1)), "count")));
  }
  if (m == "find" || m == "rfind" || m == "count") {
    Params p(a, m.c_str(), {"sub"});
    if (!p.get(0)) throw Problem(m + "() takes exactly one argument");
    const std::string& sub = need_str(*p.get(0), "substring");
    if (m == "find") return Value::integer(char_index(s, s.find(sub)));
    if (m == "rfind") return Value::integer(char_index(s, s.rfind(sub)));
    if (sub.empty()) return Value::integer(int64_t(char_starts(s).size()));
    int64_t n = 0;
    for (size_t pos = s.find(sub); pos != std::string::npos; pos = s.find(sub, pos + sub.size())) n++;
    return Value::integer(n);
  }
  if (m == "join") {
    Params p(a, m.c_str(), {"iterable"});
    if (!p.get(0)) throw Problem("join() takes exactly one argument");
    std::string out;
    const auto items = iterate(*p.get(0));
    for (size_t k = 0; k < items.size(); k++) {
      if (k) out += s;
      out += need_str(items[k], "join() item");
      if (out.size() > kMaxStringBytes) throw Problem("string too long");
    }
    return Value::string(std::move(out));
  }
  if (m == "isdigit" || m == "isalpha" || m == "isalnum" || m == "isspace" || m == "islower" || m == "isupper") {
    Params p(a, m.c_str(), {});
    if (m == "isdigit") return Value::boolean(all_chars(s, [](char c) { return c >= '0' && c <= '9'; }));
    if (m == "isalpha") return Value::boolean(all_chars(s, ascii_alpha));
    if (m == "isalnum") return Value::boolean(all_chars(s, [](char c) { return ascii_alpha(c) || (c >= '0' && c <= '9'); }));
    if (m == "isspace") return Value::boolean(all_chars(s, [](char c) { return py_space(uint8_t(c)) && uint8_t(c) < 0x80; }));
    const bool any_alpha = std::any_of(s.begin(), s.end(), ascii_alpha);
    return Value::boolean(any_alpha && (m == "islower" ? lower(s) == s : upper(s) == s));
  }
  throw Problem(fmt::format("'str' object has no attribute '{}'", m));
}

const char* const kStrMethods[] = {"strip", "lstrip", "rstrip", "split", "rsplit", "splitlines", "startswith",
                                   "endswith", "upper", "lower", "title", "capitalize", "replace", "find", "rfind",
                                   "count", "join", "isdigit", "isalpha", "isalnum", "isspace", "islower", "isupper"};
const char* const kDictMethods[] = {"items", "keys", "values", "get"};
const char* const kListMethods[] = {"index", "count"};

template <size_t N>
bool listed(const char* const (&names)[N], const std::string& m) {
  return std::find_if(std::begin(names), std::end(names), [&](const char* n) { return m == n; }) != std::end(names);
}

Value pairs(const DictData& d) {
  std::vector<Value> out;
  for (const auto& kv : d.items) out.push_back(Value::list({Value::string(kv.first), kv.second}, true));
  return Value::list(std::move(out));
}

Value call_method(const Value& self, const std::string& m, Args& a) {
  if (self.is(Kind::String)) return str_method(self.str(), m, a);
  if (self.is(Kind::Dict)) {
    const DictData& d = self.dct();
    if (m == "get") {
      Params p(a, "get", {"key", "default"});
      if (!p.get(0)) throw Problem("get() takes at least 1 argument");
      const Value* v = p.get(0)->is(Kind::String) ? d.find(p.get(0)->str()) : nullptr;
      return v ? *v : p.get(1, Value::none());
    }
    Params p(a, m.c_str(), {});
    if (m == "items") return pairs(d);
    std::vector<Value> out;
    for (const auto& kv : d.items) out.push_back(m == "keys" ? Value::string(kv.first) : kv.second);
    return Value::list(std::move(out));
  }
  // list.index / list.count
  Params p(a, m.c_str(), {"value"});
  if (!p.get(0)) throw Problem(m + "() takes exactly one argument");
  const auto& items = self.lst().items;
  int64_t n = 0;
  for (size_t k = 0; k < items.size(); k++) {
    if (!equal(items[k], *p.get(0))) continue;
    if (m == "index") return Value::integer(int64_t(k));
    n++;
  }
  if (m == "index") throw Problem(fmt::format("{} is not in list", repr(*p.get(0))));
  return Value::integer(n);
}

Value bound(const Value& self, const std::string& m) {
  return Value::function(m, [self, m](Args& a) { return call_method(self, m, a); });
}

bool has_method(const Value& obj, const std::string& m) {
  switch (obj.kind) {
    case Kind::String: return listed(kStrMethods, m);
    case Kind::Dict: return listed(kDictMethods, m);
    case Kind::List: return listed(kListMethods, m);
    default: return false;
  }
}

std::string object_name(const Value& v) {
  return v.is(Kind::None) ? "'None'" : fmt::format("'{} object'", type_name(v));
}

// "a.b.0" in map(attribute=...), selectattr, sort(attribute=...): item access per part.
Value attribute_path(const Value& v, const Value& path) {
  if (path.kind == Kind::Int) return getitem(v, path);
  Value cur = v;
  const std::string& p = need_str(path, "attribute");
  size_t start = 0;
  for (;;) {
    const size_t dot = p.find('.', start);
    std::string part = p.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    const bool num = !part.empty() && std::all_of(part.begin(), part.end(), [](char c) { return c >= '0' && c <= '9'; });
    cur = getitem(cur, num ? Value::integer(std::strtoll(part.c_str(), nullptr, 10)) : Value::string(part));
    if (dot == std::string::npos) return cur;
    start = dot + 1;
  }
}

// ---- filters -----------------------------------------------------------------------------------

Value f_abs(const Value& v, Args& a) {
  Params p(a, "abs", {});
  if (v.kind == Kind::Float) return Value::number(std::fabs(v.f));
  const int64_t x = need_int(v, "abs() argument");
  if (x == INT64_MIN) throw Problem("integer overflow");
  return Value::integer(x < 0 ? -x : x);
}

Value f_attr(const Value& v, Args& a) {
  Params p(a, "attr", {"name"});
  if (!p.get(0)) throw Problem("attr() needs a name");
  // Python's getattr only: a method or a namespace attribute, never a dict key (unlike obj.name).
  const std::string& name = need_str(*p.get(0), "attribute name");
  if (v.is(Kind::Undefined)) throw Problem(v.undefined_reason());
  if (has_method(v, name)) return bound(v, name);
  if (v.is(Kind::Namespace))
    for (const auto& kv : v.attrs())
      if (kv.first == name) return kv.second;
  return Value::undefined(fmt::format("{} has no attribute '{}'", object_name(v), name));
}

Value f_capitalize(const Value& v, Args& a) {
  Params p(a, "capitalize", {});
  return Value::string(capitalize(to_str(v)));
}

Value f_length(const Value& v, Args& a) {
  Params p(a, "length", {});
  switch (v.kind) {
    case Kind::Undefined: return Value::integer(0);
    case Kind::String: return Value::integer(int64_t(char_starts(v.str()).size() - 1));
    case Kind::List: return Value::integer(int64_t(v.lst().items.size()));
    case Kind::Dict: return Value::integer(int64_t(v.dct().items.size()));
    default: throw Problem(fmt::format("object of type '{}' has no len()", type_name(v)));
  }
}

Value f_default(const Value& v, Args& a) {
  Params p(a, "default", {"default_value", "boolean"});
  const bool boolean = truthy(p.get(1, Value::boolean(false)));
  if (v.is(Kind::Undefined) || (boolean && !truthy(v))) return p.get(0, Value::string(""));
  return v;
}

Value f_escape(const Value& v, Args& a) {
  Params p(a, "escape", {});
  return Value::string(html_escape(to_str(v)));
}

Value f_first(const Value& v, Args& a) {
  Params p(a, "first", {});
  auto items = iterate(v);
  return items.empty() ? Value::undefined("No first item, sequence was empty.") : items.front();
}

Value f_last(const Value& v, Args& a) {
  Params p(a, "last", {});
  auto items = iterate(v);
  return items.empty() ? Value::undefined("No last item, sequence was empty.") : items.back();
}

// Python's float(str): surrounding whitespace, "_" between digits, inf/nan.
bool parse_float(std::string s, double* out) {
  s = strip(s, nullptr, true, true);
  std::string t;
  for (size_t k = 0; k < s.size(); k++) {
    if (s[k] == '_' && k > 0 && k + 1 < s.size() && isdigit(uint8_t(s[k - 1])) && isdigit(uint8_t(s[k + 1]))) continue;
    t += s[k];
  }
  if (t.empty() || std::isspace(uint8_t(t[0]))) return false;
  const std::string lo = lower(t);
  const std::string body = lo[0] == '+' || lo[0] == '-' ? lo.substr(1) : lo;
  if (body == "inf" || body == "infinity" || body == "nan") {
    *out = body == "nan" ? NAN : (lo[0] == '-' ? -INFINITY : INFINITY);
    return true;
  }
  if (body.empty() || body.find_first_not_of("0123456789.e+-") != std::string::npos) return false;
  char* end = nullptr;
  *out = std::strtod(t.c_str(), &end);
  return end && *end == 0;
}

bool parse_int(std::string s, int64_t base, int64_t* out) {
  s = strip(s, nullptr, true, true);
  bool neg = false;
  size_t k = 0;
  if (k < s.size() && (s[k] == '+' || s[k] == '-')) neg = s[k++] == '-';
  if (base == 16 && s.compare(k, 2, "0x") == 0) k += 2;
  if (base == 8 && s.compare(k, 2, "0o") == 0) k += 2;
  if (base == 2 && s.compare(k, 2, "0b") == 0) k += 2;
  if (k >= s.size()) return false;
  __int128 v = 0;
  bool prev_digit = false;
  for (; k < s.size(); k++) {
    const char c = ascii_lower(s[k]);
    if (c == '_' && prev_digit && k + 1 < s.size() && s[k + 1] != '_') {
      prev_digit = false;
      continue;
    }
    const int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'z' ? c - 'a' + 10 : 99;
    if (d >= base) return false;
    v = v * base + d;
    if (v > (__int128)INT64_MAX + 1) return false;
    prev_digit = true;
  }
  if (!prev_digit) return false;
  v = neg ? -v : v;
  if (v > INT64_MAX) return false;
  *out = int64_t(v);
  return true;
}

Value f_int(const Value& v, Args& a) {
  Params p(a, "int", {"default", "base"});
  const Value def = p.get(0, Value::integer(0));
  const int64_t base = need_int(p.get(1, Value::integer(10)), "base");
  if (base < 2 || base > 36) throw Problem("int() base must be >= 2 and <= 36");
  auto from_double = [&](double d) { return std::isfinite(d) && std::fabs(d) < 9.2e18 ? Value::integer(int64_t(d)) : def; };
  switch (v.kind) {
    case Kind::Undefined: throw Problem(v.undefined_reason());  // int(Undefined) raises in jinja2
    case Kind::Int:
    case Kind::Bool: return Value::integer(v.as_int());
    case Kind::Float: return from_double(v.f);
    case Kind::String: {
      int64_t i;
      double d;
      if (parse_int(v.str(), base, &i)) return Value::integer(i);
      if (parse_float(v.str(), &d)) return from_double(d);
      return def;
    }
    default: return def;
  }
}

Value f_float(const Value& v, Args& a) {
  Params p(a, "float", {"default"});
  const Value def = p.get(0, Value::number(0.0));
  if (v.is(Kind::Undefined)) throw Problem(v.undefined_reason());
  if (v.numeric()) return Value::number(v.as_double());
  double d;
  if (v.is(Kind::String) && parse_float(v.str(), &d)) return Value::number(d);
  return def;
}

Value f_indent(const Value& v, Args& a) {
  Params p(a, "indent", {"width", "first", "blank"});
  const Value w = p.get(0, Value::integer(4));
  const std::string pad = w.is(Kind::String) ? w.str() : std::string(size_t(std::max<int64_t>(0, need_int(w, "width"))), ' ');
  const bool first = truthy(p.get(1, Value::boolean(false))), blank = truthy(p.get(2, Value::boolean(false)));
  if (v.is(Kind::Undefined)) throw Problem(v.undefined_reason());
  if (!v.is(Kind::String)) bad_operands("+=", v, Value::string(""));  // jinja2 appends "\n" to the value itself
  // jinja2 appends a newline before splitting, so a trailing newline is not indented and is lost.
  auto lines = splitlines(v.str() + "\n");
  std::string out;
  for (size_t k = 0; k < lines.size(); k++) {
    if (k) out += "\n";
    if (k && (blank || !lines[k].empty())) out += pad;
    out += lines[k];
  }
  return Value::string(first ? pad + out : out);
}

Value f_items(const Value& v, Args& a) {
  Params p(a, "items", {});
  if (v.is(Kind::Undefined)) return Value::list({});
  if (!v.is(Kind::Dict)) throw Problem("Can only get item pairs from a mapping.");
  return pairs(v.dct());
}

Value f_join(const Value& v, Args& a) {
  Params p(a, "join", {"d", "attribute"});
  const std::string sep = to_str(p.get(0, Value::string("")));
  const Value* attr = p.get(1);
  std::string out;
  const auto items = iterate(v);
  for (size_t k = 0; k < items.size(); k++) {
    if (k) out += sep;
    out += to_str(attr && !attr->is(Kind::None) ? attribute_path(items[k], *attr) : items[k]);
    if (out.size() > kMaxStringBytes) throw Problem("string too long");
  }
  return Value::string(std::move(out));
}

Value f_list(const Value& v, Args& a) {
  Params p(a, "list", {});
  return Value::list(iterate(v));
}

Value f_lower(const Value& v, Args& a) {
  Params p(a, "lower", {});
  return Value::string(lower(to_str(v)));
}

Value f_upper(const Value& v, Args& a) {
  Params p(a, "upper", {});
  return Value::string(upper(to_str(v)));
}

Value f_title(const Value& v, Args& a) {
  Params p(a, "title", {});
  return Value::string(jinja_title(to_str(v)));
}

Value f_map(const Value& v, Args& a) {
  std::vector<Value> out;
  if (!truthy(v)) return Value::list({});  // jinja2 maps over a false value as over nothing
  const Value* attr = nullptr;
  const Value* def = nullptr;
  for (const auto& kv : a.kw) {
    if (kv.first == "attribute") attr = &kv.second;
    else if (kv.first == "default") def = &kv.second;
  }
  if (attr) {
    for (const auto& x : iterate(v)) {
      Value y = attribute_path(x, *attr);
      out.push_back(y.is(Kind::Undefined) && def ? *def : y);
    }
    return Value::list(std::move(out));
  }
  if (a.pos.empty()) throw Problem("map() needs a filter name or attribute=");
  const std::string name = need_str(a.pos[0], "map() filter name");
  FilterFn f = find_filter(name);
  if (!f) throw Problem(fmt::format("no filter named '{}'", name));
  Args rest{std::vector<Value>(a.pos.begin() + 1, a.pos.end()), a.kw};
  for (const auto& x : iterate(v)) {
    Args copy = rest;
    out.push_back(f(x, copy));
  }
  return Value::list(std::move(out));
}

// select/reject/selectattr/rejectattr: keep items whose (attribute's) test is `want`.
Value choose(const Value& v, Args& a, bool by_attr, bool want) {
  size_t k = 0;
  Value attr;
  if (by_attr) {
    if (a.pos.empty()) throw Problem("selectattr()/rejectattr() need an attribute");
    attr = a.pos[k++];
  }
  TestFn test = nullptr;
  if (k < a.pos.size()) {
    const std::string name = need_str(a.pos[k++], "test name");
    test = find_test(name);
    if (!test) throw Problem(fmt::format("no test named '{}'", name));
  }
  Args rest{std::vector<Value>(a.pos.begin() + k, a.pos.end()), a.kw};
  std::vector<Value> out;
  if (!truthy(v)) return Value::list({});  // jinja2 does not even iterate a false value
  for (const auto& x : iterate(v)) {
    const Value subject = by_attr ? attribute_path(x, attr) : x;
    Args copy = rest;
    if ((test ? test(subject, copy) : truthy(subject)) == want) out.push_back(x);
  }
  return Value::list(std::move(out));
}
Value f_select(const Value& v, Args& a) { return choose(v, a, false, true); }
Value f_reject(const Value& v, Args& a) { return choose(v, a, false, false); }
Value f_selectattr(const Value& v, Args& a) { return choose(v, a, true, true); }
Value f_rejectattr(const Value& v, Args& a) { return choose(v, a, true, false); }

Value f_replace(const Value& v, Args& a) {
  Params p(a, "replace", {"old", "new", "count"});
  if (!p.get(0) || !p.get(1)) throw Problem("replace() needs old and new");
  const Value c = p.get(2, Value::none());
  return Value::string(replace(to_str(v), to_str(*p.get(0)), to_str(*p.get(1)), c.is(Kind::None) ? -1 : need_int(c, "count")));
}

Value f_reverse(const Value& v, Args& a) {
  Params p(a, "reverse", {});
  if (v.is(Kind::String)) {
    const auto at = char_starts(v.str());
    std::string out;
    for (size_t k = at.size() - 1; k > 0; k--) out.append(v.str(), at[k - 1], at[k] - at[k - 1]);
    return Value::string(std::move(out));
  }
  auto items = iterate(v);
  std::reverse(items.begin(), items.end());
  return Value::list(std::move(items));
}

Value f_safe(const Value& v, Args& a) {
  Params p(a, "safe", {});
  return Value::string(to_str(v));
}

// Sort and unique keys: the attribute, lower-cased when the comparison ignores case.
Value sort_key(const Value& x, const Value* attr, bool case_sensitive) {
  Value k = attr && !attr->is(Kind::None) ? attribute_path(x, *attr) : x;
  return !case_sensitive && k.is(Kind::String) ? Value::string(lower(k.str())) : k;
}

Value f_sort(const Value& v, Args& a) {
  Params p(a, "sort", {"reverse", "case_sensitive", "attribute"});
  const bool rev = truthy(p.get(0, Value::boolean(false))), cs = truthy(p.get(1, Value::boolean(false)));
  auto items = iterate(v);
  std::vector<std::pair<Value, Value>> keyed;
  for (auto& x : items) keyed.emplace_back(sort_key(x, p.get(2), cs), x);
  // jinja2 sorts by a list of keys, and Python compares lists' items with == before <: equal keys
  // (even two None) never meet <.
  auto before = [](const Value& x, const Value& y) { return !equal(x, y) && less(x, y); };
  std::stable_sort(keyed.begin(), keyed.end(),
                   [&](const auto& l, const auto& r) { return rev ? before(r.first, l.first) : before(l.first, r.first); });
  std::vector<Value> out;
  for (auto& kv : keyed) out.push_back(kv.second);
  return Value::list(std::move(out));
}

// A dict's (key, value) pairs sorted by key or value, case-insensitively by default.
Value f_dictsort(const Value& v, Args& a) {
  Params p(a, "dictsort", {"case_sensitive", "by", "reverse"});
  if (!v.is(Kind::Dict)) throw Problem("dictsort needs a dict");
  const bool cs = truthy(p.get(0, Value::boolean(false))), rev = truthy(p.get(2, Value::boolean(false)));
  const std::string by = to_str(p.get(1, Value::string("key")));
  if (by != "key" && by != "value") throw Problem("You can only sort by either 'key' or 'value'");
  std::vector<Value> items = pairs(v.dct()).lst().items;
  auto key = [&](const Value& pair) { return sort_key(pair.lst().items[by == "key" ? 0 : 1], nullptr, cs); };
  std::stable_sort(items.begin(), items.end(), [&](const Value& l, const Value& r) {
    return rev ? less(key(r), key(l)) : less(key(l), key(r));
  });
  return Value::list(std::move(items));
}

Value f_unique(const Value& v, Args& a) {
  Params p(a, "unique", {"case_sensitive", "attribute"});
  const bool cs = truthy(p.get(0, Value::boolean(false)));
  std::vector<Value> out, seen;
  for (const auto& x : iterate(v)) {
    Value k = sort_key(x, p.get(1), cs);
    if (std::none_of(seen.begin(), seen.end(), [&](const Value& s) { return equal(s, k); })) {
      seen.push_back(k);
      out.push_back(x);
    }
  }
  return Value::list(std::move(out));
}

Value min_max(const Value& v, Args& a, bool want_max) {
  Params p(a, want_max ? "max" : "min", {"case_sensitive", "attribute"});
  const bool cs = truthy(p.get(0, Value::boolean(false)));
  const auto items = iterate(v);
  if (items.empty()) return Value::undefined(want_max ? "No aggregated item, sequence was empty." : "No aggregated item, sequence was empty.");
  size_t best = 0;
  Value best_key = sort_key(items[0], p.get(1), cs);
  for (size_t k = 1; k < items.size(); k++) {
    Value key = sort_key(items[k], p.get(1), cs);
    if (want_max ? less(best_key, key) : less(key, best_key)) best = k, best_key = key;
  }
  return items[best];
}
Value f_min(const Value& v, Args& a) { return min_max(v, a, false); }
Value f_max(const Value& v, Args& a) { return min_max(v, a, true); }

Value f_string(const Value& v, Args& a) {
  Params p(a, "string", {});
  return Value::string(to_str(v));
}

Value f_sum(const Value& v, Args& a) {
  Params p(a, "sum", {"attribute", "start"});
  Value total = p.get(1, Value::integer(0));
  for (const auto& x : iterate(v)) total = arith("+", total, p.get(0) && !p.get(0)->is(Kind::None) ? attribute_path(x, *p.get(0)) : x);
  return total;
}

// transformers' tojson: json.dumps(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False).
Value f_tojson(const Value& v, Args& a) {
  Params p(a, "tojson", {"ensure_ascii", "indent", "separators", "sort_keys"});
  JsonOptions o;
  o.ensure_ascii = truthy(p.get(0, Value::boolean(false)));
  const Value ind = p.get(1, Value::none());
  if (!ind.is(Kind::None)) o.indent = int(std::clamp<int64_t>(need_int(ind, "indent"), 0, 64));
  const Value seps = p.get(2, Value::none());
  if (!seps.is(Kind::None)) {
    if (!seps.is(Kind::List) || seps.lst().items.size() != 2) throw Problem("separators must be a pair of strings");
    o.item_sep = need_str(seps.lst().items[0], "separator");
    o.key_sep = need_str(seps.lst().items[1], "separator");
    if (o.item_sep.empty()) o.item_sep = "\x01";  // never empty: empty means "default" in JsonOptions
  }
  o.sort_keys = truthy(p.get(3, Value::boolean(false)));
  std::string s = to_json(v, o);
  if (o.item_sep == "\x01") s.erase(std::remove(s.begin(), s.end(), '\x01'), s.end());
  return Value::string(std::move(s));
}

Value f_trim(const Value& v, Args& a) {
  Params p(a, "trim", {"chars"});
  return Value::string(strip(to_str(v), p.get(0), true, true));
}

// Python's round(x, n): to nearest, ties to even on the exact binary value, which printf's
// correctly rounded %.*f also does.
Value f_round(const Value& v, Args& a) {
  Params p(a, "round", {"precision", "method"});
  const int64_t prec = need_int(p.get(0, Value::integer(0)), "precision");
  const std::string method = to_str(p.get(1, Value::string("common")));
  if (!v.numeric()) throw Problem(fmt::format("round() needs a number, not '{}'", type_name(v)));
  const double x = v.as_double();
  if (method == "ceil" || method == "floor") {
    const double m = std::pow(10.0, double(prec));
    return Value::number((method == "ceil" ? std::ceil(x * m) : std::floor(x * m)) / m);
  }
  if (method != "common") throw Problem("method must be common, ceil or floor");
  if (v.kind != Kind::Float && prec >= 0) return Value::integer(v.as_int());  // Python's round(int, n) is the int
  if (!std::isfinite(x)) return Value::number(x);
  if (prec < 0 || prec > 300) throw Problem("round() precision out of range");
  return Value::number(std::strtod(fmt::format("{:.{}f}", x, int(prec)).c_str(), nullptr));
}

struct NamedFilter {
  const char* name;
  FilterFn fn;
};
const NamedFilter kFilters[] = {
    {"abs", f_abs},         {"attr", f_attr},           {"capitalize", f_capitalize}, {"count", f_length},
    {"d", f_default},       {"default", f_default},     {"dictsort", f_dictsort},     {"e", f_escape},              {"escape", f_escape},
    {"first", f_first},     {"float", f_float},         {"forceescape", f_escape},    {"indent", f_indent},
    {"int", f_int},         {"items", f_items},         {"join", f_join},             {"last", f_last},
    {"length", f_length},   {"list", f_list},           {"lower", f_lower},           {"map", f_map},
    {"max", f_max},         {"min", f_min},             {"reject", f_reject},         {"rejectattr", f_rejectattr},
    {"replace", f_replace}, {"reverse", f_reverse},     {"round", f_round},           {"safe", f_safe},
    {"select", f_select},   {"selectattr", f_selectattr}, {"sort", f_sort},           {"string", f_string},
    {"sum", f_sum},         {"title", f_title},         {"tojson", f_tojson},         {"trim", f_trim},
    {"unique", f_unique},   {"upper", f_upper},
};

// ---- tests -------------------------------------------------------------------------------------

const Value& one_arg(Args& a, const char* test) {
  if (a.pos.size() != 1 || !a.kw.empty()) throw Problem(fmt::format("test '{}' takes one argument", test));
  return a.pos[0];
}
void no_args(Args& a, const char* test) {
  if (!a.pos.empty() || !a.kw.empty()) throw Problem(fmt::format("test '{}' takes no arguments", test));
}

bool t_defined(const Value& v, Args& a) { return no_args(a, "defined"), !v.is(Kind::Undefined); }
bool t_undefined(const Value& v, Args& a) { return no_args(a, "undefined"), v.is(Kind::Undefined); }
bool t_none(const Value& v, Args& a) { return no_args(a, "none"), v.is(Kind::None); }
bool t_boolean(const Value& v, Args& a) { return no_args(a, "boolean"), v.is(Kind::Bool); }
bool t_true(const Value& v, Args& a) { return no_args(a, "true"), v.is(Kind::Bool) && v.b; }
bool t_false(const Value& v, Args& a) { return no_args(a, "false"), v.is(Kind::Bool) && !v.b; }
bool t_integer(const Value& v, Args& a) { return no_args(a, "integer"), v.is(Kind::Int); }
bool t_float(const Value& v, Args& a) { return no_args(a, "float"), v.is(Kind::Float); }
bool t_number(const Value& v, Args& a) { return no_args(a, "number"), v.numeric(); }  // True is a number in Python
bool t_string(const Value& v, Args& a) { return no_args(a, "string"), v.is(Kind::String); }
bool t_mapping(const Value& v, Args& a) { return no_args(a, "mapping"), v.is(Kind::Dict); }
bool t_sequence(const Value& v, Args& a) {
  // Undefined too: jinja2 only asks for len() and __getitem__, which Undefined has.
  return no_args(a, "sequence"), v.is(Kind::String) || v.is(Kind::List) || v.is(Kind::Dict) || v.is(Kind::Undefined);
}
bool t_iterable(const Value& v, Args& a) {
  return no_args(a, "iterable"), v.is(Kind::String) || v.is(Kind::List) || v.is(Kind::Dict) || v.is(Kind::Undefined);
}
bool t_callable(const Value& v, Args& a) { return no_args(a, "callable"), v.is(Kind::Callable); }
// Python's `value % n`, so 3.0 is odd as in jinja2.
bool t_odd(const Value& v, Args& a) { return no_args(a, "odd"), equal(arith("%", v, Value::integer(2)), Value::integer(1)); }
bool t_even(const Value& v, Args& a) { return no_args(a, "even"), equal(arith("%", v, Value::integer(2)), Value::integer(0)); }
bool t_divisibleby(const Value& v, Args& a) { return equal(arith("%", v, one_arg(a, "divisibleby")), Value::integer(0)); }
bool t_eq(const Value& v, Args& a) { return equal(v, one_arg(a, "eq")); }
bool t_ne(const Value& v, Args& a) { return !equal(v, one_arg(a, "ne")); }
bool t_lt(const Value& v, Args& a) { return less(v, one_arg(a, "lt")); }
bool t_gt(const Value& v, Args& a) { return less(one_arg(a, "gt"), v); }
bool t_le(const Value& v, Args& a) { return less(v, one_arg(a, "le")) || equal(v, a.pos[0]); }
bool t_ge(const Value& v, Args& a) { return less(one_arg(a, "ge"), v) || equal(v, a.pos[0]); }
bool t_in(const Value& v, Args& a) { return contains(one_arg(a, "in"), v); }
bool t_sameas(const Value& v, Args& a) {
  const Value& o = one_arg(a, "sameas");
  if (v.kind != o.kind) return false;
  if (v.p || o.p) return v.p == o.p;  // containers and strings: the same object
  return equal(v, o);
}
bool t_lower(const Value& v, Args& a) {
  no_args(a, "lower");
  Args none;
  return truthy(str_method(to_str(v), "islower", none));
}
bool t_upper(const Value& v, Args& a) {
  no_args(a, "upper");
  Args none;
  return truthy(str_method(to_str(v), "isupper", none));
}
bool t_escaped(const Value& v, Args& a) { return no_args(a, "escaped"), false; }

struct NamedTest {
  const char* name;
  TestFn fn;
};
const NamedTest kTests[] = {
    {"defined", t_defined}, {"undefined", t_undefined}, {"none", t_none},       {"boolean", t_boolean},
    {"true", t_true},       {"false", t_false},         {"integer", t_integer}, {"float", t_float},
    {"number", t_number},   {"string", t_string},       {"mapping", t_mapping}, {"sequence", t_sequence},
    {"iterable", t_iterable}, {"callable", t_callable}, {"odd", t_odd},         {"even", t_even},
    {"divisibleby", t_divisibleby}, {"eq", t_eq},       {"equalto", t_eq},      {"==", t_eq},
    {"ne", t_ne},           {"!=", t_ne},               {"lt", t_lt},           {"lessthan", t_lt},
    {"<", t_lt},            {"le", t_le},               {"<=", t_le},           {"gt", t_gt},
    {"greaterthan", t_gt},  {">", t_gt},                {"ge", t_ge},           {">=", t_ge},
    {"in", t_in},           {"sameas", t_sameas},       {"lower", t_lower},     {"upper", t_upper},
    {"escaped", t_escaped},
};

// ---- arithmetic --------------------------------------------------------------------------------

[[noreturn]] void bad_operands(const std::string& op, const Value& a, const Value& b) {
  throw Problem(fmt::format("unsupported operand type(s) for {}: '{}' and '{}'", op, type_name(a), type_name(b)));
}

// `op` is one of __builtin_{add,sub,mul}_overflow.
template <class Op>
Value checked(Op op, int64_t x, int64_t y) {
  int64_t r;
  if (op(x, y, &r)) throw Problem("integer overflow");
  return Value::integer(r);
}

Value repeat(const Value& seq, int64_t n) {
  n = std::max<int64_t>(0, n);
  if (seq.is(Kind::String)) {
    if (n && seq.str().size() * uint64_t(n) > kMaxStringBytes) throw Problem("string too long");
    std::string out;
    for (int64_t k = 0; k < n; k++) out += seq.str();
    return Value::string(std::move(out));
  }
  const auto& items = seq.lst().items;
  if (n && items.size() * uint64_t(n) > (1u << 24)) throw Problem("list too long");
  std::vector<Value> out;
  for (int64_t k = 0; k < n; k++) out.insert(out.end(), items.begin(), items.end());
  return Value::list(std::move(out), seq.lst().tuple);
}

}  // namespace

FilterFn find_filter(std::string_view name) {
  for (const auto& f : kFilters)
    if (name == f.name) return f.fn;
  return nullptr;
}

TestFn find_test(std::string_view name) {
  for (const auto& t : kTests)
    if (name == t.name) return t.fn;
  return nullptr;
}

Value getattr(const Value& obj, const std::string& name) {
  if (obj.is(Kind::Undefined)) throw Problem(obj.undefined_reason());
  if (has_method(obj, name)) return bound(obj, name);
  if (obj.is(Kind::Dict)) {
    if (const Value* v = obj.dct().find(name)) return *v;
  } else if (obj.is(Kind::Namespace)) {
    for (const auto& kv : obj.attrs())
      if (kv.first == name) return kv.second;
  }
  return Value::undefined(fmt::format("{} has no attribute '{}'", object_name(obj), name));
}

Value getitem(const Value& obj, const Value& key) {
  if (obj.is(Kind::Undefined)) throw Problem(obj.undefined_reason());
  if (obj.is(Kind::Dict) && key.is(Kind::String)) {
    if (const Value* v = obj.dct().find(key.str())) return *v;
  }
  if ((obj.is(Kind::List) || obj.is(Kind::String)) && (key.is(Kind::Int) || key.is(Kind::Bool))) {
    int64_t i = key.as_int();
    if (obj.is(Kind::List)) {
      const auto& items = obj.lst().items;
      if (i < 0) i += int64_t(items.size());
      if (i >= 0 && i < int64_t(items.size())) return items[size_t(i)];
    } else {
      const auto at = char_starts(obj.str());
      const int64_t n = int64_t(at.size()) - 1;
      if (i < 0) i += n;
      if (i >= 0 && i < n) return Value::string(obj.str().substr(at[i], at[i + 1] - at[i]));
    }
    return Value::undefined(fmt::format("{} has no element {}", object_name(obj), key.as_int()));
  }
  if (key.is(Kind::String)) return getattr(obj, key.str());  // jinja2 falls back to the attribute
  return Value::undefined(fmt::format("{} has no element {}", object_name(obj), repr(key)));
}

Value slice(const Value& obj, const Value& start_v, const Value& stop_v, const Value& step_v) {
  if (obj.is(Kind::Undefined)) throw Problem(obj.undefined_reason());
  auto part = [](const Value& v, const char* what) -> std::optional<int64_t> {
    if (v.is(Kind::Undefined) || v.is(Kind::None)) return std::nullopt;
    return need_int(v, what);
  };
  if (!obj.is(Kind::List) && !obj.is(Kind::String)) return Value::undefined(fmt::format("{} cannot be sliced", object_name(obj)));
  const auto step = part(step_v, "slice step").value_or(1);
  if (step == 0) throw Problem("slice step cannot be zero");
  std::vector<size_t> at;
  int64_t n;
  if (obj.is(Kind::String)) {
    at = char_starts(obj.str());
    n = int64_t(at.size()) - 1;
  } else {
    n = int64_t(obj.lst().items.size());
  }
  // Python's slice.indices(n).
  auto clamp = [&](std::optional<int64_t> v, int64_t def) {
    if (!v) return def;
    int64_t x = *v < 0 ? *v + n : *v;
    if (x < 0) return step < 0 ? int64_t(-1) : int64_t(0);
    if (x >= n) return step < 0 ? n - 1 : n;
    return x;
  };
  const int64_t start = clamp(part(start_v, "slice start"), step < 0 ? n - 1 : 0);
  const int64_t stop = clamp(part(stop_v, "slice stop"), step < 0 ? -1 : n);
  std::vector<int64_t> idx;
  for (int64_t k = start; step > 0 ? k < stop : k > stop; k += step) idx.push_back(k);
  if (obj.is(Kind::String)) {
    std::string out;
    for (int64_t k : idx) out.append(obj.str(), at[k], at[k + 1] - at[k]);
    return Value::string(std::move(out));
  }
  std::vector<Value> out;
  for (int64_t k : idx) out.push_back(obj.lst().items[size_t(k)]);
  return Value::list(std::move(out), obj.lst().tuple);
}

std::vector<Value> iterate(const Value& v) {
  switch (v.kind) {
    case Kind::Undefined: return {};
    case Kind::List: return v.lst().items;
    case Kind::Dict: {
      std::vector<Value> keys;
      for (const auto& kv : v.dct().items) keys.push_back(Value::string(kv.first));
      return keys;
    }
    case Kind::String: {
      const auto at = char_starts(v.str());
      std::vector<Value> chars;
      for (size_t k = 0; k + 1 < at.size(); k++) chars.push_back(Value::string(v.str().substr(at[k], at[k + 1] - at[k])));
      return chars;
    }
    default: throw Problem(fmt::format("'{}' object is not iterable", type_name(v)));
  }
}

bool contains(const Value& c, const Value& item) {
  switch (c.kind) {
    case Kind::Undefined: return false;  // iterating undefined yields nothing
    case Kind::String:
      if (!item.is(Kind::String))
        throw Problem(fmt::format("'in <string>' requires string as left operand, not {}", type_name(item)));
      return c.str().find(item.str()) != std::string::npos;
    case Kind::List:
      return std::any_of(c.lst().items.begin(), c.lst().items.end(), [&](const Value& x) { return equal(x, item); });
    case Kind::Dict:
      if (item.is(Kind::List) || item.is(Kind::Dict) || item.is(Kind::Namespace))
        throw Problem(fmt::format("unhashable type: '{}'", type_name(item)));
      return item.is(Kind::String) && c.dct().find(item.str());
    default: throw Problem(fmt::format("argument of type '{}' is not iterable", type_name(c)));
  }
}

Value arith(const std::string& op, const Value& a, const Value& b) {
  if (op == "~") {
    std::string s = to_str(a) + to_str(b);
    if (s.size() > kMaxStringBytes) throw Problem("string too long");
    return Value::string(std::move(s));
  }
  if (a.is(Kind::Undefined)) throw Problem(a.undefined_reason());
  if (b.is(Kind::Undefined)) throw Problem(b.undefined_reason());
  const bool ints = (a.is(Kind::Int) || a.is(Kind::Bool)) && (b.is(Kind::Int) || b.is(Kind::Bool));
  const bool nums = a.numeric() && b.numeric();
  const int64_t x = ints ? a.as_int() : 0, y = ints ? b.as_int() : 0;
  if (op == "+") {
    if (ints) return checked([](int64_t a, int64_t b, int64_t* r) { return __builtin_add_overflow(a, b, r); }, x, y);
    if (nums) return Value::number(a.as_double() + b.as_double());
    if (a.is(Kind::String) && b.is(Kind::String)) {
      if (a.str().size() + b.str().size() > kMaxStringBytes) throw Problem("string too long");
      return Value::string(a.str() + b.str());
    }
    if (a.is(Kind::List) && b.is(Kind::List) && a.lst().tuple == b.lst().tuple) {
      std::vector<Value> out = a.lst().items;
      out.insert(out.end(), b.lst().items.begin(), b.lst().items.end());
      return Value::list(std::move(out), a.lst().tuple);
    }
    bad_operands(op, a, b);
  }
  if (op == "-") {
    if (ints) return checked([](int64_t a, int64_t b, int64_t* r) { return __builtin_sub_overflow(a, b, r); }, x, y);
    if (nums) return Value::number(a.as_double() - b.as_double());
    bad_operands(op, a, b);
  }
  if (op == "*") {
    if (ints) return checked([](int64_t a, int64_t b, int64_t* r) { return __builtin_mul_overflow(a, b, r); }, x, y);
    if (nums) return Value::number(a.as_double() * b.as_double());
    if (a.sequence() && (b.is(Kind::Int) || b.is(Kind::Bool))) return repeat(a, b.as_int());
    if (b.sequence() && (a.is(Kind::Int) || a.is(Kind::Bool))) return repeat(b, a.as_int());
    bad_operands(op, a, b);
  }
  if (!nums) {
    if (op == "%" && a.is(Kind::String)) throw Problem("string formatting with % is not supported");
    bad_operands(op, a, b);
  }
  if (op == "/") {
    if (b.as_double() == 0) throw Problem("division by zero");
    return Value::number(a.as_double() / b.as_double());
  }
  if (op == "//" || op == "%") {
    if (ints) {
      if (y == 0) throw Problem("integer division or modulo by zero");
      if (x == INT64_MIN && y == -1) throw Problem("integer overflow");
      int64_t q = x / y, m = x % y;
      if (m != 0 && ((m < 0) != (y < 0))) q--, m += y;  // Python floors
      return Value::integer(op == "//" ? q : m);
    }
    // CPython's float divmod, so both results match Python's to the last bit.
    const double p = a.as_double(), q = b.as_double();
    if (q == 0) throw Problem("float division by zero");
    double m = std::fmod(p, q), div = (p - m) / q;
    if (m != 0) {
      if ((q < 0) != (m < 0)) m += q, div -= 1.0;
    } else {
      m = std::copysign(0.0, q);
    }
    double fd = std::copysign(0.0, p / q);
    if (div != 0) {
      fd = std::floor(div);
      if (div - fd > 0.5) fd += 1.0;
    }
    return Value::number(op == "//" ? fd : m);
  }
  if (op == "**") {
    if (ints && y >= 0) {
      int64_t out = 1, base = x, e = y;
      bool over = false;
      while (e) {
        if (e & 1) over |= __builtin_mul_overflow(out, base, &out);
        e >>= 1;
        if (e) over |= __builtin_mul_overflow(base, base, &base);
      }
      if (over) throw Problem("integer overflow");
      return Value::integer(out);
    }
    if (a.as_double() == 0 && b.as_double() < 0) throw Problem("0.0 cannot be raised to a negative power");
    return Value::number(std::pow(a.as_double(), b.as_double()));
  }
  throw Problem("unknown operator " + op);
}

Items globals() {
  Items g;
  g.emplace_back("range", Value::function("range", [](Args& a) {
    if (!a.kw.empty() || a.pos.empty() || a.pos.size() > 3) throw Problem("range() takes 1 to 3 integer arguments");
    int64_t start = 0, stop, step = 1;
    if (a.pos.size() == 1) {
      stop = need_int(a.pos[0], "range() argument");
    } else {
      start = need_int(a.pos[0], "range() argument");
      stop = need_int(a.pos[1], "range() argument");
      if (a.pos.size() == 3) step = need_int(a.pos[2], "range() argument");
    }
    if (step == 0) throw Problem("range() arg 3 must not be zero");
    std::vector<Value> out;
    for (int64_t k = start; step > 0 ? k < stop : k > stop; k += step) {
      if (out.size() >= 100000) throw Problem("range too big, the sandbox allows 100000 items");  // jinja2's MAX_RANGE
      out.push_back(Value::integer(k));
    }
    return Value::list(std::move(out));
  }));
  g.emplace_back("namespace", Value::function("namespace", [](Args& a) {
    Items attrs;
    for (const auto& p : a.pos) {
      if (!p.is(Kind::Dict)) throw Problem("namespace() takes a dict and keyword arguments");
      for (const auto& kv : p.dct().items) attrs.push_back(kv);
    }
    for (const auto& kv : a.kw) attrs.push_back(kv);
    const Value unique = Value::dict(std::move(attrs));  // a repeated name keeps its last value
    return Value::ns(unique.dct().items);
  }));
  g.emplace_back("dict", Value::function("dict", [](Args& a) {
    Items items;
    for (const auto& p : a.pos) {
      if (!p.is(Kind::Dict)) throw Problem("dict() takes a dict and keyword arguments");
      for (const auto& kv : p.dct().items) items.push_back(kv);
    }
    for (const auto& kv : a.kw) items.push_back(kv);
    return Value::dict(std::move(items));
  }));
  g.emplace_back("raise_exception", Value::function("raise_exception", [](Args& a) -> Value {
    throw Problem(a.pos.empty() ? std::string("raise_exception() called") : to_str(a.pos[0]));
  }));
  g.emplace_back("strftime_now", Value::function("strftime_now", [](Args& a) {
    if (a.pos.size() != 1) throw Problem("strftime_now() takes a format");
    const std::string& f = need_str(a.pos[0], "strftime_now() format");
    const std::time_t t = std::time(nullptr);
    std::tm tm{};
    localtime_r(&t, &tm);
    char buf[512];
    const size_t n = std::strftime(buf, sizeof buf, f.c_str(), &tm);
    return Value::string(std::string(buf, n));
  }));
  return g;
}

}  // namespace sky::jinja
