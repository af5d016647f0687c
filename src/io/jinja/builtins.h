#pragma once
// Filters, tests, methods and globals of the Jinja subset (internal to io/jinja).
#include <string>
#include <string_view>
#include <vector>

#include "io/jinja/value.h"

namespace sky::jinja {

using FilterFn = Value (*)(const Value& in, Args& args);
using TestFn = bool (*)(const Value& in, Args& args);
FilterFn find_filter(std::string_view name);  // null when unknown
TestFn find_test(std::string_view name);

// jinja2's getattr (obj.name: a method first, then a key) and getitem (obj[key]: a key or index
// first, then a method). A missing attribute is undefined; any access on undefined throws.
Value getattr(const Value& obj, const std::string& name);
Value getitem(const Value& obj, const Value& key);
Value slice(const Value& obj, const Value& start, const Value& stop, const Value& step);

// The elements a for loop visits: a list's items, a dict's keys, a string's characters; nothing
// for undefined. Throws for values Python cannot iterate.
std::vector<Value> iterate(const Value& v);
bool contains(const Value& container, const Value& item);  // `item in container`
Value arith(const std::string& op, const Value& a, const Value& b);  // + - * / // % ** ~

// range, namespace, dict, raise_exception, strftime_now.
Items globals();

// Longest string a template may build (repetition, concatenation) and its whole output.
constexpr size_t kMaxStringBytes = size_t(64) << 20;

}  // namespace sky::jinja
