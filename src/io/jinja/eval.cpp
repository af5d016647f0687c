// Runs a parsed template. Scoping follows jinja2: each iteration of a for loop gets a fresh scope
// (a `set` inside it is gone after the iteration, reads fall through to the enclosing scopes),
// `if` opens no scope, a macro runs in its own scope above the template's top level, and only a
// namespace() carries values out of a loop.
#include <fmt/format.h>

#include <algorithm>
#include <utility>

#include "io/jinja/ast.h"
#include "io/jinja/builtins.h"
#include "io/jinja/template.h"

namespace sky::jinja {

TemplateError::TemplateError(const std::string& name, int line, const std::string& what)
    : Error(fmt::format("{}, line {}: {}", name, line, what)), line(line), message(what) {}

namespace {

// Bounds on work a template can demand (jinja2's sandbox has none of its own beyond range()).
constexpr int64_t kMaxIterations = 1'000'000;  // loop iterations and macro calls, all together
constexpr int kMaxMacroDepth = 100;

struct Scope {
  Items vars;
  const Scope* parent = nullptr;

  const Value* find(const std::string& name) const {
    for (const Scope* s = this; s; s = s->parent)
      for (auto it = s->vars.rbegin(); it != s->vars.rend(); ++it)
        if (it->first == name) return &it->second;
    return nullptr;
  }
  void set(const std::string& name, Value v) {
    for (auto& kv : vars)
      if (kv.first == name) {
        kv.second = std::move(v);
        return;
      }
    vars.emplace_back(name, std::move(v));
  }
};

enum class Flow { Normal, Break, Continue };

class Interp {
 public:
  explicit Interp(const Program& p) : prog_(p) {}

  std::string run(const Items& vars) {
    globals_.vars = globals();
    context_.parent = &globals_;
    for (const auto& kv : vars) context_.set(kv.first, kv.second);
    top_.parent = &context_;
    hide(top_, prog_.fresh);
    exec(prog_.body, top_);
    return std::move(out_);
  }

 private:
  [[noreturn]] void fail(int line, const std::string& what) { throw TemplateError(prog_.name, line, what); }

  void emit(const std::string& s) {
    out_ += s;
    if (out_.size() > kMaxStringBytes) throw Problem("the rendered template exceeds 64 MiB");
  }

  void tick() {
    if (++work_ > kMaxIterations) throw Problem("the template ran more than a million loop iterations");
  }

  Flow exec(const Body& body, Scope& scope) {
    for (const auto& s : body) {
      Flow f;
      try {
        f = stmt(*s, scope);
      } catch (const Problem& p) {
        fail(s->line, p.what());
      }
      if (f != Flow::Normal) return f;
    }
    return Flow::Normal;
  }

  void assign(Scope& scope, const std::vector<std::string>& names, const Value& v) {
    if (names.size() == 1) {
      scope.set(names[0], v);
      return;
    }
    const auto items = iterate(v);
    if (items.size() != names.size() || v.is(Kind::Undefined))
      throw Problem(fmt::format("cannot unpack {} values into {} names", items.size(), names.size()));
    for (size_t k = 0; k < names.size(); k++) scope.set(names[k], items[k]);
  }

  Flow stmt(const Stmt& s, Scope& scope) {
    switch (s.kind) {
      case Stmt::Text: emit(s.text); break;
      case Stmt::Output: emit(to_str(eval(*s.exprs[0], scope))); break;
      case Stmt::If:
        for (size_t k = 0; k < s.exprs.size(); k++)
          if (truthy(eval(*s.exprs[k], scope))) return exec(s.bodies[k], scope);
        if (s.bodies.size() > s.exprs.size()) return exec(s.bodies.back(), scope);
        break;
      case Stmt::For: loop(s, scope); break;
      case Stmt::Set: assign(scope, s.names, eval(*s.exprs[0], scope)); break;
      case Stmt::SetAttr: {
        const Value* found = scope.find(s.names[0]);
        if (!found || !found->is(Kind::Namespace)) throw Problem("cannot assign attribute on non-namespace object");
        const Value ns = *found;  // shares the namespace's attributes
        Value v = eval(*s.exprs[0], scope);
        Items& attrs = ns.attrs();
        for (auto& kv : attrs)
          if (kv.first == s.text) {
            kv.second = std::move(v);
            return Flow::Normal;
          }
        attrs.emplace_back(s.text, std::move(v));
        break;
      }
      case Stmt::SetBlock: {
        std::string saved = std::move(out_);
        out_.clear();
        Scope block{{}, &scope};
        hide(block, s.fresh[0]);
        exec(s.bodies[0], block);
        std::string text = std::move(out_);
        out_ = std::move(saved);
        scope.set(s.names[0], Value::string(std::move(text)));
        break;
      }
      case Stmt::Macro: {
        const Stmt* m = &s;
        scope.set(s.text, Value::function(s.text, [this, m](Args& a) { return run_body(*m, top_, m->text, a); }));
        break;
      }
      case Stmt::CallBlock: call_block(s, scope); break;
      case Stmt::FilterBlock: {
        std::string saved = std::move(out_);
        out_.clear();
        Scope frame{{}, &scope};
        hide(frame, s.fresh[0]);
        exec(s.bodies[0], frame);
        Scope holder{{}, &scope};
        holder.set(kFilterBodyName, Value::string(std::exchange(out_, std::move(saved))));
        emit(to_str(eval(*s.exprs[0], holder)));
        break;
      }
      case Stmt::Break: return Flow::Break;
      case Stmt::Continue: return Flow::Continue;
    }
    return Flow::Normal;
  }

  void loop(const Stmt& s, Scope& scope) {
    std::vector<Value> items = iterate(eval(*s.exprs[0], scope));
    if (s.exprs[1]) {  // `for x in xs if cond`: filtered first, so loop.length and loop.last see the kept items
      std::vector<Value> kept;
      for (auto& x : items) {
        tick();
        Scope probe{{}, &scope};
        hide(probe, s.fresh[0]);
        assign(probe, s.names, x);
        if (truthy(eval(*s.exprs[1], probe))) kept.push_back(std::move(x));
      }
      items = std::move(kept);
    }
    if (items.empty()) {
      if (s.bodies.size() > 1) {
        Scope inner{{}, &scope};
        hide(inner, s.fresh[1]);
        exec(s.bodies[1], inner);
      }
      return;
    }
    const int64_t n = int64_t(items.size());
    for (int64_t k = 0; k < n; k++) {
      tick();
      Scope iter{{}, &scope};
      hide(iter, s.fresh[0]);
      assign(iter, s.names, items[size_t(k)]);
      if (s.uses_loop) iter.set("loop", loop_object(items, k));
      if (exec(s.bodies[0], iter) == Flow::Break) break;
    }
  }

  static Value loop_object(const std::vector<Value>& items, int64_t k) {
    const int64_t n = int64_t(items.size());
    Items l;
    l.emplace_back("index", Value::integer(k + 1));
    l.emplace_back("index0", Value::integer(k));
    l.emplace_back("revindex", Value::integer(n - k));
    l.emplace_back("revindex0", Value::integer(n - k - 1));
    l.emplace_back("first", Value::boolean(k == 0));
    l.emplace_back("last", Value::boolean(k == n - 1));
    l.emplace_back("length", Value::integer(n));
    l.emplace_back("depth", Value::integer(1));
    l.emplace_back("depth0", Value::integer(0));
    l.emplace_back("previtem", k > 0 ? items[size_t(k - 1)] : Value::undefined("there is no previous item"));
    l.emplace_back("nextitem", k + 1 < n ? items[size_t(k + 1)] : Value::undefined("there is no next item"));
    l.emplace_back("cycle", Value::function("cycle", [k](Args& a) {
      if (a.pos.empty()) throw Problem("no items for cycling given");
      return a.pos[size_t(k) % a.pos.size()];
    }));
    return Value::dict(std::move(l));
  }

  // {% call m(...) %}body{% endcall %}: m gets `caller`, which renders the body where the call
  // block stands. A caller kept past its block (in a namespace, say) refuses to run.
  void call_block(const Stmt& s, const Scope& scope) {
    if (!s.exprs[0]) {  // {% generation %}
      Scope frame{{}, &scope};
      hide(frame, s.fresh[0]);
      exec(s.bodies[0], frame);
      return;
    }
    auto alive = std::make_shared<bool>(true);
    const Stmt* cs = &s;
    const Scope* site = &scope;
    Value caller = Value::function("caller", [this, cs, site, alive](Args& a) {
      if (!*alive) throw Problem("caller() called after its call block ended");
      return run_body(*cs, *site, "caller", a);
    });
    const Expr& call = *s.exprs[0];
    Value f = eval(*call.kids[0], scope);
    if (f.is(Kind::Undefined)) throw Problem(f.undefined_reason());
    if (!f.is(Kind::Callable)) throw Problem(fmt::format("'{}' object is not callable", type_name(f)));
    Args a = args(call, 1, scope);
    a.kw.emplace_back("caller", std::move(caller));
    struct Expire {
      std::shared_ptr<bool> alive;
      ~Expire() { *alive = false; }
    } expire{alive};
    emit(to_str(f.fn().call(a)));
  }

  // A macro's or a caller's body with its parameters bound (defaults may use the ones before them);
  // the body's output is the result.
  Value run_body(const Stmt& m, const Scope& parent, const std::string& name, Args& a) {
    tick();
    if (macro_depth_ >= kMaxMacroDepth) throw Problem(fmt::format("macros nested deeper than {} calls", kMaxMacroDepth));
    const bool is_macro = m.kind == Stmt::Macro;
    const size_t first_default = is_macro ? 0 : 1;  // a call block's exprs[0] is the call
    Value caller = Value::undefined("No caller defined");
    for (auto it = a.kw.begin(); is_macro && it != a.kw.end(); ++it)
      if (it->first == "caller" && std::find(m.names.begin(), m.names.end(), "caller") == m.names.end()) {
        caller = it->second;
        a.kw.erase(it);
        break;
      }
    if (a.pos.size() > m.names.size())
      throw Problem(fmt::format("macro '{}' takes not more than {} argument(s)", name, m.names.size()));
    Scope scope{{}, &parent};
    hide(scope, m.fresh[0]);
    if (is_macro) scope.set("caller", caller);
    for (size_t k = 0; k < a.pos.size(); k++) scope.set(m.names[k], a.pos[k]);
    for (const auto& kv : a.kw) {
      auto it = std::find(m.names.begin(), m.names.end(), kv.first);
      if (it == m.names.end()) throw Problem(fmt::format("macro '{}' takes no keyword argument '{}'", name, kv.first));
      if (size_t(it - m.names.begin()) < a.pos.size())
        throw Problem(fmt::format("macro '{}' got multiple values for argument '{}'", name, kv.first));
      scope.set(kv.first, kv.second);
    }
    for (size_t k = 0; k < m.names.size(); k++)
      if (!has(scope, m.names[k])) {
        const Expr* def = m.exprs[first_default + k].get();
        scope.set(m.names[k], def ? eval(*def, scope) : Value::undefined(fmt::format("parameter '{}' was not provided", m.names[k])));
      }
    std::string saved = std::move(out_);
    out_.clear();
    macro_depth_++;
    try {
      exec(m.bodies[0], scope);
    } catch (...) {
      macro_depth_--;
      throw;
    }
    macro_depth_--;
    std::string result = std::move(out_);
    out_ = std::move(saved);
    return Value::string(std::move(result));
  }

  static bool has(const Scope& s, const std::string& name) {
    for (const auto& kv : s.vars)
      if (kv.first == name) return true;
    return false;
  }

  Args args(const Expr& e, size_t first, const Scope& scope) {
    Args a;
    const size_t nkw = e.names.size(), end = e.kids.size() - nkw;
    for (size_t k = first; k < end; k++) {
      if (e.kids[k]->kind != Expr::Spread) {
        a.pos.push_back(eval(*e.kids[k], scope));
        continue;
      }
      for (auto& v : iterate(eval(*e.kids[k]->kids[0], scope))) a.pos.push_back(std::move(v));
    }
    for (size_t k = 0; k < nkw; k++) {
      if (e.names[k] != "**") {
        a.kw.emplace_back(e.names[k], eval(*e.kids[end + k], scope));
        continue;
      }
      Value d = eval(*e.kids[end + k]->kids[0], scope);
      if (!d.is(Kind::Dict)) throw Problem(fmt::format("argument after ** must be a mapping, not {}", type_name(d)));
      for (const auto& kv : d.dct().items) a.kw.push_back(kv);
    }
    return a;
  }

  Value eval(const Expr& e, const Scope& scope) {
    try {
      return eval_inner(e, scope);
    } catch (const Problem& p) {
      fail(e.line, p.what());
    }
  }

  Value eval_inner(const Expr& e, const Scope& scope) {
    switch (e.kind) {
      case Expr::Lit: return e.lit;
      case Expr::Name: {
        const Value* v = scope.find(e.name);
        return v ? *v : Value::undefined(fmt::format("'{}' is undefined", e.name));
      }
      case Expr::List:
      case Expr::Tuple: {
        std::vector<Value> items;
        for (const auto& k : e.kids) items.push_back(eval(*k, scope));
        return Value::list(std::move(items), e.kind == Expr::Tuple);
      }
      case Expr::Dict: {
        Items items;
        for (size_t k = 0; k < e.kids.size(); k += 2) {
          Value key = eval(*e.kids[k], scope);
          if (!key.is(Kind::String)) throw Problem(fmt::format("dict keys must be strings here, not '{}'", type_name(key)));
          items.emplace_back(key.str(), eval(*e.kids[k + 1], scope));
        }
        return Value::dict(std::move(items));
      }
      case Expr::Attr: return getattr(eval(*e.kids[0], scope), e.name);
      case Expr::Item: return getitem(eval(*e.kids[0], scope), eval(*e.kids[1], scope));
      case Expr::Slice: {
        Value parts[3];
        for (int k = 0; k < 3; k++)
          if (e.kids[k + 1]) parts[k] = eval(*e.kids[k + 1], scope);
        return slice(eval(*e.kids[0], scope), parts[0], parts[1], parts[2]);
      }
      case Expr::Call: {
        Value f = eval(*e.kids[0], scope);
        if (f.is(Kind::Undefined)) throw Problem(f.undefined_reason());
        if (!f.is(Kind::Callable)) throw Problem(fmt::format("'{}' object is not callable", type_name(f)));
        Args a = args(e, 1, scope);
        return f.fn().call(a);
      }
      case Expr::Filter: {
        FilterFn f = find_filter(e.name);
        if (!f) throw Problem(fmt::format("no filter named '{}'", e.name));
        Value in = eval(*e.kids[0], scope);
        Args a = args(e, 1, scope);
        return f(in, a);
      }
      case Expr::Test: {
        TestFn t = find_test(e.name);
        if (!t) throw Problem(fmt::format("no test named '{}'", e.name));
        Value in = eval(*e.kids[0], scope);
        Args a = args(e, 1, scope);
        return Value::boolean(t(in, a) != e.negated);
      }
      case Expr::Neg:
      case Expr::Pos: {
        Value v = eval(*e.kids[0], scope);
        if (v.is(Kind::Undefined)) throw Problem(v.undefined_reason());
        if (!v.numeric())
          throw Problem(fmt::format("bad operand type for unary {}: '{}'", e.kind == Expr::Neg ? '-' : '+', type_name(v)));
        if (e.kind == Expr::Pos) return v.is(Kind::Bool) ? Value::integer(v.as_int()) : v;
        if (v.is(Kind::Float)) return Value::number(-v.f);  // -0.0 stays negative
        return arith("-", Value::integer(0), v);
      }
      case Expr::Not: return Value::boolean(!truthy(eval(*e.kids[0], scope)));
      case Expr::And: {
        Value a = eval(*e.kids[0], scope);
        return truthy(a) ? eval(*e.kids[1], scope) : a;
      }
      case Expr::Or: {
        Value a = eval(*e.kids[0], scope);
        return truthy(a) ? a : eval(*e.kids[1], scope);
      }
      case Expr::Bin: return arith(e.name, eval(*e.kids[0], scope), eval(*e.kids[1], scope));
      case Expr::Cmp: {
        Value left = eval(*e.kids[0], scope);
        for (size_t k = 0; k < e.names.size(); k++) {
          Value right = eval(*e.kids[k + 1], scope);
          if (!compare(e.names[k], left, right)) return Value::boolean(false);
          left = std::move(right);
        }
        return Value::boolean(true);
      }
      case Expr::Spread: throw Problem("* and ** only spread a call's arguments");
      case Expr::Cond:
        if (truthy(eval(*e.kids[1], scope))) return eval(*e.kids[0], scope);
        if (e.kids[2]) return eval(*e.kids[2], scope);
        return Value::undefined("the inline if-expression evaluated to false and has no else section");
    }
    return Value();
  }

  static bool compare(const std::string& op, const Value& a, const Value& b) {
    if (op == "==") return equal(a, b);
    if (op == "!=") return !equal(a, b);
    if (op == "in") return contains(b, a);
    if (op == "notin") return !contains(b, a);
    if (a.is(Kind::Undefined)) throw Problem(a.undefined_reason());  // jinja2 raises before Python compares
    if (b.is(Kind::Undefined)) throw Problem(b.undefined_reason());
    if (op == "<") return less(a, b);
    if (op == ">") return less(b, a);
    if (op == "<=") return less(a, b) || equal(a, b);
    return less(b, a) || equal(a, b);  // >=
  }

  // A frame's own names start undefined, hiding outer values (scopes.cpp).
  static void hide(Scope& scope, const std::vector<std::string>& names) {
    for (const auto& n : names) scope.set(n, Value::undefined(fmt::format("'{}' is undefined", n)));
  }

  const Program& prog_;
  Scope globals_, context_, top_;  // globals, the caller's variables, the template's top level
  std::string out_;
  int64_t work_ = 0;
  int macro_depth_ = 0;
};

}  // namespace

Template::Template(std::string_view source, std::string name) {
  auto p = std::make_shared<Program>();
  p->name = std::move(name);
  p->body = parse(lex(source, p->name), p->name);
  analyze_scopes(*p);
  prog_ = std::move(p);
}

std::string Template::render(const Items& vars) const { return Interp(*prog_).run(vars); }

const std::string& Template::name() const { return prog_->name; }

}  // namespace sky::jinja
