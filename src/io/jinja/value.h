#pragma once
// Values of the Jinja subset (io/jinja/template.h) with the Python semantics chat templates rely
// on: str() of None is "None", 1.0 prints as "1.0", [1] == [1.0], dicts keep insertion order.
// Strings, lists and dicts are immutable and shared (the sandbox transformers renders in forbids
// mutating them); only a namespace() changes in place.
#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace sky::jinja {

// A runtime problem without a location; the evaluator adds the template line (TemplateError).
struct Problem : std::runtime_error {
  using std::runtime_error::runtime_error;
};

enum class Kind { Undefined, None, Bool, Int, Float, String, List, Dict, Namespace, Callable };

struct Value;
struct ListData;
struct DictData;
struct Callable;
struct Args;
using Items = std::vector<std::pair<std::string, Value>>;

// Lists and dicts built from template data may not nest deeper than this: printing and comparing
// recurse, and `{% set x = [x] %}` in a loop could otherwise nest without bound.
constexpr int kMaxNesting = 200;

struct Value {
  Kind kind = Kind::Undefined;
  union {
    bool b;
    int64_t i;
    double f;
  };
  // String: std::string; Undefined: the reason, e.g. "'x' is undefined" (may be null);
  // List: ListData; Dict: DictData; Namespace: Items (mutable); Callable: Callable.
  std::shared_ptr<void> p;

  Value() : i(0) {}
  static Value undefined(std::string why = "");
  static Value none();
  static Value boolean(bool v);
  static Value integer(int64_t v);
  static Value number(double v);
  static Value string(std::string v);
  static Value list(std::vector<Value> items, bool tuple = false);
  static Value dict(Items items);  // later duplicates replace earlier keys, as in a dict literal
  static Value ns(Items attrs);
  static Value function(std::string name, std::function<Value(Args&)> fn);

  bool is(Kind k) const { return kind == k; }
  bool numeric() const { return kind == Kind::Bool || kind == Kind::Int || kind == Kind::Float; }
  bool sequence() const { return kind == Kind::List || kind == Kind::String; }
  const std::string& str() const { return *static_cast<const std::string*>(p.get()); }
  const ListData& lst() const { return *static_cast<const ListData*>(p.get()); }
  const DictData& dct() const { return *static_cast<const DictData*>(p.get()); }
  Items& attrs() const { return *static_cast<Items*>(p.get()); }
  const Callable& fn() const { return *static_cast<const Callable*>(p.get()); }
  std::string undefined_reason() const;
  int depth() const;  // nesting of lists/dicts, 0 for scalars
  double as_double() const { return kind == Kind::Float ? f : kind == Kind::Int ? double(i) : double(b); }
  int64_t as_int() const { return kind == Kind::Int ? i : int64_t(b); }  // Int or Bool
};

struct ListData {
  std::vector<Value> items;
  bool tuple = false;  // prints as (a, b) and never equals a list, as in Python
  int depth = 1;
};

struct DictData {
  Items items;  // string keys only, insertion order
  int depth = 1;
  const Value* find(std::string_view key) const;
};

struct Args {
  std::vector<Value> pos;
  Items kw;
};

struct Callable {
  std::string name;
  std::function<Value(Args&)> call;
};

// Python's type name, for messages ("'<' not supported between instances of 'int' and 'str'").
const char* type_name(const Value& v);
bool truthy(const Value& v);
std::string to_str(const Value& v);   // Python str(): what {{ v }} prints; undefined prints ""
std::string repr(const Value& v);     // Python repr()
std::string float_repr(double d);     // Python's shortest round-trip form: 1.0, 1e+16, 0.1
bool equal(const Value& a, const Value& b);
bool less(const Value& a, const Value& b);  // throws Problem for types Python cannot order

struct JsonOptions {
  int indent = -1;  // < 0: one line
  bool ensure_ascii = false;
  bool sort_keys = false;
  std::string item_sep, key_sep;  // empty: Python's defaults (", " or "," with indent; ": ")
};
// json.dumps as transformers' tojson filter calls it (no HTML escaping, keys in insertion order).
std::string to_json(const Value& v, const JsonOptions& o);

// JSON from outside (messages, tools) as template values; objects keep their order when `J` is
// nlohmann::ordered_json.
template <class J>
Value from_json(const J& j) {
  if (j.is_null()) return Value::none();
  if (j.is_boolean()) return Value::boolean(j.template get<bool>());
  if (j.is_number_unsigned() && j.template get<uint64_t>() > uint64_t(INT64_MAX))
    return Value::number(j.template get<double>());
  if (j.is_number_integer()) return Value::integer(j.template get<int64_t>());
  if (j.is_number()) return Value::number(j.template get<double>());
  if (j.is_string()) return Value::string(j.template get<std::string>());
  if (j.is_array()) {
    std::vector<Value> items;
    items.reserve(j.size());
    for (const auto& e : j) items.push_back(from_json(e));
    return Value::list(std::move(items));
  }
  Items items;
  items.reserve(j.size());
  for (auto it = j.begin(); it != j.end(); ++it) items.emplace_back(it.key(), from_json(it.value()));
  return Value::dict(std::move(items));
}

// UTF-8 helpers shared by the filters and methods. A malformed byte counts as one character of
// its own, so slicing never loses bytes.
std::vector<size_t> char_starts(std::string_view s);  // byte offset of each character, then s.size()
std::string html_escape(std::string_view s);

}  // namespace sky::jinja
