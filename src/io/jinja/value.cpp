#include "io/jinja/value.h"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <unordered_map>

#include "io/jinja/utf8.h"

namespace sky::jinja {

Value Value::undefined(std::string why) {
  Value v;
  if (!why.empty()) v.p = std::make_shared<std::string>(std::move(why));
  return v;
}

Value Value::none() {
  Value v;
  v.kind = Kind::None;
  return v;
}

Value Value::boolean(bool x) {
  Value v;
  v.kind = Kind::Bool;
  v.b = x;
  return v;
}

Value Value::integer(int64_t x) {
  Value v;
  v.kind = Kind::Int;
  v.i = x;
  return v;
}

Value Value::number(double x) {
  Value v;
  v.kind = Kind::Float;
  v.f = x;
  return v;
}

Value Value::string(std::string s) {
  Value v;
  v.kind = Kind::String;
  v.p = std::make_shared<std::string>(std::move(s));
  return v;
}

static int nested_depth(int child_depth) {
  if (child_depth + 1 > kMaxNesting) throw Problem(fmt::format("lists and dicts nested deeper than {} levels", kMaxNesting));
  return child_depth + 1;
}

Value Value::list(std::vector<Value> items, bool tuple) {
  auto d = std::make_shared<ListData>();
  int deepest = 0;
  for (const auto& x : items) deepest = std::max(deepest, x.depth());
  d->depth = nested_depth(deepest);
  d->items = std::move(items);
  d->tuple = tuple;
  Value v;
  v.kind = Kind::List;
  v.p = std::move(d);
  return v;
}

Value Value::dict(Items items) {
  auto d = std::make_shared<DictData>();
  int deepest = 0;
  // A repeated key keeps its first position and takes the last value, as a Python dict literal does.
  // The views point into d->items, which never reallocates (reserved).
  d->items.reserve(items.size());
  std::unordered_map<std::string_view, size_t> seen;
  for (auto& kv : items) {
    deepest = std::max(deepest, kv.second.depth());
    auto it = seen.find(kv.first);
    if (it != seen.end()) {
      d->items[it->second].second = std::move(kv.second);
    } else {
      d->items.push_back(std::move(kv));
      seen.emplace(d->items.back().first, d->items.size() - 1);
    }
  }
  d->depth = nested_depth(deepest);
  Value v;
  v.kind = Kind::Dict;
  v.p = std::move(d);
  return v;
}

Value Value::ns(Items attrs) {
  Value v;
  v.kind = Kind::Namespace;
  v.p = std::make_shared<Items>(std::move(attrs));
  return v;
}

Value Value::function(std::string name, std::function<Value(Args&)> fn) {
  Value v;
  v.kind = Kind::Callable;
  v.p = std::make_shared<Callable>(Callable{std::move(name), std::move(fn)});
  return v;
}

std::string Value::undefined_reason() const { return p ? str() : "value is undefined"; }

int Value::depth() const {
  if (kind == Kind::List) return lst().depth;
  if (kind == Kind::Dict) return dct().depth;
  return 0;
}

const Value* DictData::find(std::string_view key) const {
  for (const auto& kv : items)
    if (kv.first == key) return &kv.second;
  return nullptr;
}

const char* type_name(const Value& v) {
  switch (v.kind) {
    case Kind::Undefined: return "Undefined";
    case Kind::None: return "NoneType";
    case Kind::Bool: return "bool";
    case Kind::Int: return "int";
    case Kind::Float: return "float";
    case Kind::String: return "str";
    case Kind::List: return v.lst().tuple ? "tuple" : "list";
    case Kind::Dict: return "dict";
    case Kind::Namespace: return "Namespace";
    case Kind::Callable: return "function";
  }
  return "?";
}

bool truthy(const Value& v) {
  switch (v.kind) {
    case Kind::Undefined:
    case Kind::None: return false;
    case Kind::Bool: return v.b;
    case Kind::Int: return v.i != 0;
    case Kind::Float: return v.f != 0;
    case Kind::String: return !v.str().empty();
    case Kind::List: return !v.lst().items.empty();
    case Kind::Dict: return !v.dct().items.empty();
    default: return true;
  }
}

std::string float_repr(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d < 0 ? "-inf" : "inf";
  // The shortest digits that round-trip, laid out the way Python's repr does: positional for
  // decimal exponents in [-4, 16), scientific (at least two exponent digits) otherwise.
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof buf, std::fabs(d), std::chars_format::scientific);
  std::string sci(buf, r.ptr);
  const size_t e = sci.find('e');
  std::string digits = sci.substr(0, 1) + (e > 2 ? sci.substr(2, e - 2) : "");
  const int exp = std::stoi(sci.substr(e + 1));
  std::string out = std::signbit(d) ? "-" : "";
  if (exp >= -4 && exp < 16) {
    if (exp >= 0) {
      if (int(digits.size()) <= exp + 1)
        out += digits + std::string(exp + 1 - digits.size(), '0') + ".0";
      else
        out += digits.substr(0, exp + 1) + "." + digits.substr(exp + 1);
    } else {
      out += "0." + std::string(-exp - 1, '0') + digits;
    }
  } else {
    out += digits.substr(0, 1);
    if (digits.size() > 1) out += "." + digits.substr(1);
    out += fmt::format("e{}{:02d}", exp < 0 ? '-' : '+', std::abs(exp));
  }
  return out;
}

static std::string str_repr(const std::string& s) {
  const bool dq = s.find('\'') != std::string::npos && s.find('"') == std::string::npos;
  const char q = dq ? '"' : '\'';
  std::string out(1, q);
  for (size_t i = 0; i < s.size();) {
    size_t n = 1;
    const uint32_t cp = utf8_decode(s, i, &n);
    if (cp == '\\' || cp == uint32_t(q))
      out += '\\', out += char(cp);
    else if (cp == '\n')
      out += "\\n";
    else if (cp == '\r')
      out += "\\r";
    else if (cp == '\t')
      out += "\\t";
    else if (cp < 0x20 || cp == 0x7f || (cp >= 0x80 && cp <= 0xa0) || cp == 0xad)
      out += fmt::format("\\x{:02x}", cp);  // Python escapes these as not printable
    else if (cp == 0x2028 || cp == 0x2029)
      out += fmt::format("\\u{:04x}", cp);
    else
      out.append(s, i, n);
    i += n;
  }
  return out + q;
}

static std::string items_repr(const Items& items) {
  std::string out = "{";
  for (size_t k = 0; k < items.size(); k++) {
    if (k) out += ", ";
    out += str_repr(items[k].first) + ": " + repr(items[k].second);
  }
  return out + "}";
}

std::string repr(const Value& v) {
  switch (v.kind) {
    case Kind::String: return str_repr(v.str());
    case Kind::Undefined: return "Undefined";
    case Kind::List: {
      const auto& l = v.lst();
      std::string out = l.tuple ? "(" : "[";
      for (size_t k = 0; k < l.items.size(); k++) out += (k ? ", " : "") + repr(l.items[k]);
      if (l.tuple && l.items.size() == 1) out += ",";
      return out + (l.tuple ? ")" : "]");
    }
    case Kind::Dict: return items_repr(v.dct().items);
    default: return to_str(v);
  }
}

std::string to_str(const Value& v) {
  switch (v.kind) {
    case Kind::Undefined: return "";
    case Kind::None: return "None";
    case Kind::Bool: return v.b ? "True" : "False";
    case Kind::Int: return std::to_string(v.i);
    case Kind::Float: return float_repr(v.f);
    case Kind::String: return v.str();
    case Kind::Namespace: return "<Namespace " + items_repr(v.attrs()) + ">";
    case Kind::Callable: return "<function " + v.fn().name + ">";
    default: return repr(v);
  }
}

bool equal(const Value& a, const Value& b) {
  if (a.numeric() && b.numeric()) {
    if (a.kind != Kind::Float && b.kind != Kind::Float) return a.as_int() == b.as_int();
    return a.as_double() == b.as_double();
  }
  if (a.kind != b.kind) return false;
  switch (a.kind) {
    case Kind::Undefined:
    case Kind::None: return true;
    case Kind::String: return a.str() == b.str();
    case Kind::List: {
      const auto &x = a.lst(), &y = b.lst();
      if (x.tuple != y.tuple || x.items.size() != y.items.size()) return false;
      for (size_t k = 0; k < x.items.size(); k++)
        if (!equal(x.items[k], y.items[k])) return false;
      return true;
    }
    case Kind::Dict: {
      const auto &x = a.dct(), &y = b.dct();
      if (x.items.size() != y.items.size()) return false;
      for (const auto& kv : x.items) {
        const Value* o = y.find(kv.first);
        if (!o || !equal(kv.second, *o)) return false;
      }
      return true;
    }
    default: return a.p == b.p;  // namespaces and functions: identity
  }
}

bool less(const Value& a, const Value& b) {
  if (a.numeric() && b.numeric()) {
    if (a.kind != Kind::Float && b.kind != Kind::Float) return a.as_int() < b.as_int();
    return a.as_double() < b.as_double();
  }
  if (a.kind == Kind::String && b.kind == Kind::String) return a.str() < b.str();  // UTF-8 order = code point order
  if (a.kind == Kind::List && b.kind == Kind::List && a.lst().tuple == b.lst().tuple) {
    const auto &x = a.lst().items, &y = b.lst().items;
    for (size_t k = 0; k < std::min(x.size(), y.size()); k++)
      if (!equal(x[k], y[k])) return less(x[k], y[k]);
    return x.size() < y.size();
  }
  throw Problem(fmt::format("'<' not supported between instances of '{}' and '{}'", type_name(a), type_name(b)));
}

static void json_string(std::string& out, const std::string& s, bool ascii) {
  out += '"';
  for (size_t i = 0; i < s.size();) {
    size_t n = 1;
    const uint32_t cp = utf8_decode(s, i, &n);
    switch (cp) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (cp < 0x20) {
          out += fmt::format("\\u{:04x}", cp);
        } else if (ascii && cp >= 0x80) {
          if (cp >= 0x10000)  // a UTF-16 surrogate pair, as Python writes it
            out += fmt::format("\\u{:04x}\\u{:04x}", 0xD800 + ((cp - 0x10000) >> 10), 0xDC00 + ((cp - 0x10000) & 0x3FF));
          else
            out += fmt::format("\\u{:04x}", cp);
        } else {
          out.append(s, i, n);
        }
    }
    i += n;
  }
  out += '"';
}

static void json_value(std::string& out, const Value& v, const JsonOptions& o, int level) {
  const std::string item_sep = !o.item_sep.empty() ? o.item_sep : o.indent >= 0 ? "," : ", ";
  const std::string key_sep = !o.key_sep.empty() ? o.key_sep : ": ";
  auto newline = [&](int lv) {
    if (o.indent >= 0) out += '\n' + std::string(size_t(o.indent) * lv, ' ');
  };
  switch (v.kind) {
    case Kind::None: out += "null"; return;
    case Kind::Bool: out += v.b ? "true" : "false"; return;
    case Kind::Int: out += std::to_string(v.i); return;
    case Kind::Float:
      out += std::isnan(v.f) ? "NaN" : std::isinf(v.f) ? (v.f < 0 ? "-Infinity" : "Infinity") : float_repr(v.f);
      return;
    case Kind::String: json_string(out, v.str(), o.ensure_ascii); return;
    case Kind::List: {
      const auto& items = v.lst().items;
      if (items.empty()) { out += "[]"; return; }
      out += '[';
      for (size_t k = 0; k < items.size(); k++) {
        if (k) out += item_sep;
        newline(level + 1);
        json_value(out, items[k], o, level + 1);
      }
      newline(level);
      out += ']';
      return;
    }
    case Kind::Dict: {
      std::vector<const std::pair<std::string, Value>*> items;
      for (const auto& kv : v.dct().items) items.push_back(&kv);
      if (items.empty()) { out += "{}"; return; }
      if (o.sort_keys) std::stable_sort(items.begin(), items.end(), [](auto* a, auto* b) { return a->first < b->first; });
      out += '{';
      for (size_t k = 0; k < items.size(); k++) {
        if (k) out += item_sep;
        newline(level + 1);
        json_string(out, items[k]->first, o.ensure_ascii);
        out += key_sep;
        json_value(out, items[k]->second, o, level + 1);
      }
      newline(level);
      out += '}';
      return;
    }
    default: throw Problem(fmt::format("Object of type {} is not JSON serializable", type_name(v)));
  }
}

std::string to_json(const Value& v, const JsonOptions& o) {
  std::string out;
  json_value(out, v, o, 0);
  return out;
}

std::vector<size_t> char_starts(std::string_view s) {
  std::vector<size_t> at;
  at.reserve(s.size() + 1);
  for (size_t i = 0; i < s.size();) {
    at.push_back(i);
    size_t n = 1;
    utf8_decode(s, i, &n);
    i += n;
  }
  at.push_back(s.size());
  return at;
}

std::string html_escape(std::string_view s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&#34;"; break;
      case '\'': out += "&#39;"; break;
      default: out += c;
    }
  }
  return out;
}

}  // namespace sky::jinja
