// Recursive descent over the lexer's tokens with jinja2's grammar and precedence (low to high):
// "x if c else y", or, and, not, comparisons and in, + -, ~, * / // %, **, unary - +, then
// postfix (.attr [item] (call)) and filters/tests, so `-x|abs` is abs(-x) and `a ~ b|upper` is
// a ~ upper(b), as in jinja2.
#include <fmt/format.h>

#include <algorithm>

#include "io/jinja/ast.h"
#include "io/jinja/builtins.h"
#include "io/jinja/template.h"

namespace sky::jinja {

namespace {

// Deeper nesting than this is refused rather than risking the stack (real templates nest < 10).
constexpr int kMaxParseDepth = 128;

class Parser {
 public:
  Parser(const std::vector<Token>& t, const std::string& name) : t_(t), name_(name) {}

  Body program() {
    std::string end;
    return body({}, &end, 0);
  }

 private:
  // ---- tokens --------------------------------------------------------------------------------
  const Token& cur() const { return t_[k_]; }
  const Token& next() { return t_[k_ < t_.size() - 1 ? k_++ : k_]; }
  bool is_op(const char* op) const { return cur().type == Token::Op && cur().s == op; }
  bool is_name(const char* n) const { return cur().type == Token::Name && cur().s == n; }
  bool skip_op(const char* op) {
    if (!is_op(op)) return false;
    next();
    return true;
  }
  bool skip_name(const char* n) {
    if (!is_name(n)) return false;
    next();
    return true;
  }
  static std::string describe(const Token& t) {
    switch (t.type) {
      case Token::Text: return "text";
      case Token::VarBegin: return "'{{'";
      case Token::VarEnd: return "'}}'";
      case Token::BlockBegin: return "'{%'";
      case Token::BlockEnd: return "'%}'";
      case Token::Name: return "'" + t.s + "'";
      case Token::Int: return fmt::format("'{}'", t.i);
      case Token::Float: return "a number";
      case Token::Str: return "a string";
      case Token::Op: return "'" + t.s + "'";
      case Token::Eof: return "end of template";
    }
    return "?";
  }
  [[noreturn]] void fail(const std::string& what, int line = 0) { throw TemplateError(name_, line ? line : cur().line, what); }
  void expect_op(const char* op) {
    if (!skip_op(op)) fail(fmt::format("expected '{}', got {}", op, describe(cur())));
  }
  std::string expect_name() {
    if (cur().type != Token::Name) fail(fmt::format("expected a name, got {}", describe(cur())));
    return next().s;
  }
  void expect_block_end() {
    if (cur().type != Token::BlockEnd) fail(fmt::format("expected '%}}', got {}", describe(cur())));
    next();
  }

  struct Deeper {
    Parser& p;
    explicit Deeper(Parser& p) : p(p) {
      if (++p.depth_ > kMaxParseDepth) p.fail(fmt::format("template nested deeper than {} levels", kMaxParseDepth));
    }
    ~Deeper() { p.depth_--; }
  };

  ExprP node(Expr::Kind k, int line) {
    auto e = std::make_unique<Expr>();
    e->kind = k;
    e->line = line;
    return e;
  }

  // ---- statements ----------------------------------------------------------------------------
  // Statements until one of `ends` opens a block tag; *ended gets that tag name (the caller reads
  // the rest of the tag). With no ends, runs to the end of the template.
  Body body(std::initializer_list<const char*> ends, std::string* ended, int open_line) {
    Deeper d(*this);
    Body out;
    for (;;) {
      const Token& tk = cur();
      if (tk.type == Token::Eof) {
        if (ends.size() == 0) return out;
        std::string want;
        for (const char* e : ends) want += (want.empty() ? "'" : " or '") + std::string(e) + "'";
        fail(fmt::format("unexpected end of template: the block opened on line {} needs {}", open_line, want));
      }
      if (tk.type == Token::Text) {
        auto s = std::make_unique<Stmt>();
        s->kind = Stmt::Text;
        s->line = tk.line;
        s->text = tk.s;
        out.push_back(std::move(s));
        next();
      } else if (tk.type == Token::VarBegin) {
        auto s = std::make_unique<Stmt>();
        s->kind = Stmt::Output;
        s->line = tk.line;
        next();
        s->exprs.push_back(tuple_expr(true));
        if (cur().type != Token::VarEnd) fail(fmt::format("expected '}}}}', got {}", describe(cur())));
        next();
        out.push_back(std::move(s));
      } else if (tk.type == Token::BlockBegin) {
        next();
        const int line = cur().line;
        const std::string tag = expect_name();
        if (std::find_if(ends.begin(), ends.end(), [&](const char* e) { return tag == e; }) != ends.end()) {
          *ended = tag;
          return out;
        }
        statement(tag, line, out);
      } else {
        fail(fmt::format("unexpected {}", describe(tk)));
      }
    }
  }

  void statement(const std::string& tag, int line, Body& out) {
    auto s = std::make_unique<Stmt>();
    s->line = line;
    std::string end;
    if (tag == "if") {
      s->kind = Stmt::If;
      s->exprs.push_back(expression(true));
      expect_block_end();
      s->bodies.push_back(body({"elif", "else", "endif"}, &end, line));
      while (end == "elif") {
        s->exprs.push_back(expression(true));
        expect_block_end();
        s->bodies.push_back(body({"elif", "else", "endif"}, &end, line));
      }
      if (end == "else") {
        expect_block_end();
        s->bodies.push_back(body({"endif"}, &end, line));
      }
      expect_block_end();
    } else if (tag == "for") {
      s->kind = Stmt::For;
      s->names = targets();
      if (!skip_name("in")) fail(fmt::format("expected 'in', got {}", describe(cur())));
      s->exprs.push_back(tuple_expr(false));  // no ternary here: a trailing "if" filters the loop
      s->exprs.push_back(skip_name("if") ? expression(true) : nullptr);
      if (is_name("recursive")) fail("recursive loops are not supported");
      expect_block_end();
      loops_++;
      const int loop_refs = loop_refs_;
      s->bodies.push_back(body({"else", "endfor"}, &end, line));
      s->uses_loop = loop_refs_ != loop_refs;
      loops_--;
      if (end == "else") {
        expect_block_end();
        s->bodies.push_back(body({"endfor"}, &end, line));
      }
      expect_block_end();
    } else if (tag == "set") {
      if (is_op("(")) {  // {% set (a, b) = ... %}
        s->kind = Stmt::Set;
        s->names = targets();
        expect_op("=");
        s->exprs.push_back(tuple_expr(true));
        expect_block_end();
        out.push_back(std::move(s));
        return;
      }
      const std::string first = expect_name();
      if (skip_op(".")) {
        s->kind = Stmt::SetAttr;
        s->names = {first};
        s->text = expect_name();
      } else {
        s->names = {first};
        while (skip_op(",")) {
          if (is_op("=")) break;
          s->names.push_back(expect_name());
        }
      }
      if (skip_op("=")) {
        if (s->kind != Stmt::SetAttr) s->kind = Stmt::Set;
        s->exprs.push_back(tuple_expr(true));
        expect_block_end();
      } else {
        if (s->kind == Stmt::SetAttr || s->names.size() != 1) fail("a block set assigns one plain name");
        s->kind = Stmt::SetBlock;
        expect_block_end();
        s->bodies.push_back(body({"endset"}, &end, line));
        expect_block_end();
      }
    } else if (tag == "macro") {
      s->kind = Stmt::Macro;
      s->text = expect_name();
      expect_op("(");
      while (!is_op(")")) {
        s->names.push_back(expect_name());
        s->exprs.push_back(skip_op("=") ? expression(true) : nullptr);
        if (!skip_op(",")) break;
      }
      expect_op(")");
      expect_block_end();
      const int outer = loops_;
      loops_ = 0;  // break/continue cannot reach a loop around the macro's definition
      s->bodies.push_back(body({"endmacro"}, &end, line));
      loops_ = outer;
      expect_block_end();
    } else if (tag == "break" || tag == "continue") {
      if (loops_ == 0) fail(fmt::format("'{}' outside a loop", tag), line);
      s->kind = tag == "break" ? Stmt::Break : Stmt::Continue;
      expect_block_end();
    } else if (tag == "call") {
      s->kind = Stmt::CallBlock;
      s->exprs.push_back(nullptr);
      if (skip_op("(")) {
        while (!is_op(")")) {
          s->names.push_back(expect_name());
          s->exprs.push_back(skip_op("=") ? expression(true) : nullptr);
          if (!skip_op(",")) break;
        }
        expect_op(")");
      }
      s->exprs[0] = expression(true);
      if (s->exprs[0]->kind != Expr::Call) fail("expected a call after 'call'", line);
      expect_block_end();
      const int outer = loops_;
      loops_ = 0;
      s->bodies.push_back(body({"endcall"}, &end, line));
      loops_ = outer;
      expect_block_end();
    } else if (tag == "filter") {
      // {% filter f(args)|g %}body{% endfilter %}: the chain applied to the rendered body, which it
      // finds under a name no template can write.
      s->kind = Stmt::FilterBlock;
      auto body_ref = node(Expr::Name, line);
      body_ref->name = kFilterBodyName;
      auto chain = node(Expr::Filter, line);
      chain->name = expect_name();
      chain->kids.push_back(std::move(body_ref));
      if (is_op("(")) call_args(*chain);
      s->exprs.push_back(filters(std::move(chain)));
      expect_block_end();
      s->bodies.push_back(body({"endfilter"}, &end, line));
      expect_block_end();
    } else if (tag == "generation") {
      // transformers' {% generation %} marks assistant text for its masks (a call block around a
      // body of its own); the text renders in place.
      s->kind = Stmt::CallBlock;
      s->exprs.push_back(nullptr);
      expect_block_end();
      s->bodies.push_back(body({"endgeneration"}, &end, line));
      expect_block_end();
    } else if (tag == "elif" || tag == "else" || tag.rfind("end", 0) == 0) {
      fail(fmt::format("unexpected '{}'", tag), line);
    } else {
      fail(fmt::format("unknown or unsupported tag '{}'", tag), line);
    }
    out.push_back(std::move(s));
  }

  // for/set targets: a name, or several separated by commas (unpacking), optionally in parentheses.
  std::vector<std::string> targets() {
    const bool paren = skip_op("(");
    std::vector<std::string> names = {expect_name()};
    while (skip_op(",")) {
      if (cur().type != Token::Name || is_name("in")) break;
      names.push_back(expect_name());
    }
    if (paren) expect_op(")");
    return names;
  }

  // ---- expressions ---------------------------------------------------------------------------
  // An expression, or several separated by commas: a tuple (`{% set a = 1, 2 %}`).
  ExprP tuple_expr(bool condexpr) {
    const int line = cur().line;
    ExprP first = expression(condexpr);
    if (!is_op(",")) return first;
    auto t = node(Expr::Tuple, line);
    t->kids.push_back(std::move(first));
    while (skip_op(",")) {
      if (cur().type == Token::VarEnd || cur().type == Token::BlockEnd || is_op(")") || is_name("if")) break;
      t->kids.push_back(expression(condexpr));
    }
    return t;
  }

  ExprP expression(bool condexpr) {
    Deeper d(*this);
    ExprP e = or_expr();
    while (condexpr && is_name("if")) {
      const int line = next().line;
      auto c = node(Expr::Cond, line);
      c->kids.push_back(std::move(e));
      c->kids.push_back(or_expr());
      c->kids.push_back(skip_name("else") ? expression(true) : nullptr);
      e = std::move(c);
    }
    return e;
  }

  ExprP binary(Expr::Kind k, int line, ExprP a, ExprP b, std::string op = "") {
    auto e = node(k, line);
    e->name = std::move(op);
    e->kids.push_back(std::move(a));
    e->kids.push_back(std::move(b));
    return e;
  }

  ExprP or_expr() {
    ExprP e = and_expr();
    while (is_name("or")) {
      const int line = next().line;
      e = binary(Expr::Or, line, std::move(e), and_expr());
    }
    return e;
  }

  ExprP and_expr() {
    ExprP e = not_expr();
    while (is_name("and")) {
      const int line = next().line;
      e = binary(Expr::And, line, std::move(e), not_expr());
    }
    return e;
  }

  ExprP not_expr() {
    if (is_name("not")) {
      Deeper d(*this);
      auto e = node(Expr::Not, next().line);
      e->kids.push_back(not_expr());
      return e;
    }
    return compare();
  }

  ExprP compare() {
    const int line = cur().line;
    ExprP first = math1();
    std::unique_ptr<Expr> cmp;
    for (;;) {
      std::string op;
      if (cur().type == Token::Op && (cur().s == "==" || cur().s == "!=" || cur().s == "<" || cur().s == ">" ||
                                      cur().s == "<=" || cur().s == ">=")) {
        op = next().s;
      } else if (is_name("in")) {
        next();
        op = "in";
      } else if (is_name("not") && t_[k_ + 1].type == Token::Name && t_[k_ + 1].s == "in") {
        next(), next();
        op = "notin";
      } else {
        break;
      }
      if (!cmp) {
        cmp = node(Expr::Cmp, line);
        cmp->kids.push_back(std::move(first));
      }
      cmp->names.push_back(op);
      cmp->kids.push_back(math1());
    }
    return cmp ? std::move(cmp) : std::move(first);
  }

  ExprP math1() {
    ExprP e = concat();
    while (is_op("+") || is_op("-")) {
      const Token& op = next();
      e = binary(Expr::Bin, op.line, std::move(e), concat(), op.s);
    }
    return e;
  }

  ExprP concat() {
    ExprP e = math2();
    while (is_op("~")) {
      const int line = next().line;
      e = binary(Expr::Bin, line, std::move(e), math2(), "~");
    }
    return e;
  }

  ExprP math2() {
    ExprP e = power();
    while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
      const Token& op = next();
      e = binary(Expr::Bin, op.line, std::move(e), power(), op.s);
    }
    return e;
  }

  ExprP power() {
    ExprP e = unary(true);
    while (is_op("**")) {
      const int line = next().line;
      e = binary(Expr::Bin, line, std::move(e), unary(true), "**");
    }
    return e;
  }

  ExprP unary(bool with_filter) {
    Deeper d(*this);
    ExprP e;
    if (is_op("-") || is_op("+")) {
      const Token& op = next();
      e = node(op.s == "-" ? Expr::Neg : Expr::Pos, op.line);
      e->kids.push_back(unary(false));
    } else {
      e = primary();
    }
    e = postfix(std::move(e));
    return with_filter ? filters(std::move(e)) : std::move(e);
  }

  ExprP primary() {
    const Token& tk = cur();
    const int line = tk.line;
    if (tk.type == Token::Name) {
      next();
      auto e = node(Expr::Lit, line);
      if (tk.s == "true" || tk.s == "True")
        e->lit = Value::boolean(true);
      else if (tk.s == "false" || tk.s == "False")
        e->lit = Value::boolean(false);
      else if (tk.s == "none" || tk.s == "None")
        e->lit = Value::none();
      else
        e->kind = Expr::Name, e->name = tk.s;
      loop_refs_ += tk.s == "loop";
      return e;
    }
    if (tk.type == Token::Str) {
      std::string s;
      while (cur().type == Token::Str) s += next().s;  // adjacent literals join, as in Python
      auto e = node(Expr::Lit, line);
      e->lit = Value::string(std::move(s));
      return e;
    }
    if (tk.type == Token::Int || tk.type == Token::Float) {
      next();
      auto e = node(Expr::Lit, line);
      e->lit = tk.type == Token::Int ? Value::integer(tk.i) : Value::number(tk.f);
      return e;
    }
    if (skip_op("(")) {
      if (skip_op(")")) return node(Expr::Tuple, line);
      ExprP e = expression(true);
      if (is_op(",")) {
        auto t = node(Expr::Tuple, line);
        t->kids.push_back(std::move(e));
        while (skip_op(",") && !is_op(")")) t->kids.push_back(expression(true));
        e = std::move(t);
      }
      expect_op(")");
      return e;
    }
    if (skip_op("[")) {
      auto e = node(Expr::List, line);
      while (!is_op("]")) {
        e->kids.push_back(expression(true));
        if (!skip_op(",")) break;
      }
      expect_op("]");
      return e;
    }
    if (skip_op("{")) {
      auto e = node(Expr::Dict, line);
      while (!is_op("}")) {
        e->kids.push_back(expression(true));
        expect_op(":");
        e->kids.push_back(expression(true));
        if (!skip_op(",")) break;
      }
      expect_op("}");
      return e;
    }
    fail(fmt::format("unexpected {}", describe(tk)));
  }

  ExprP postfix(ExprP e) {
    for (;;) {
      const int line = cur().line;
      if (skip_op(".")) {
        if (cur().type == Token::Int) {  // x.0 is x[0]
          auto idx = node(Expr::Lit, line);
          idx->lit = Value::integer(next().i);
          auto it = node(Expr::Item, line);
          it->kids.push_back(std::move(e));
          it->kids.push_back(std::move(idx));
          e = std::move(it);
        } else {
          auto a = node(Expr::Attr, line);
          a->name = expect_name();
          a->kids.push_back(std::move(e));
          e = std::move(a);
        }
      } else if (skip_op("[")) {
        e = subscript(std::move(e), line);
      } else if (is_op("(")) {
        auto c = node(Expr::Call, line);
        c->kids.push_back(std::move(e));
        call_args(*c);
        e = std::move(c);
      } else {
        return e;
      }
    }
  }

  ExprP subscript(ExprP obj, int line) {
    ExprP parts[3];
    int n = 0;
    bool slice = false;
    for (;;) {
      if (!is_op(":") && !is_op("]")) parts[n] = expression(true);
      if (n < 2 && skip_op(":")) {
        slice = true;
        n++;
        continue;
      }
      break;
    }
    expect_op("]");
    auto e = node(slice ? Expr::Slice : Expr::Item, line);
    e->kids.push_back(std::move(obj));
    if (!slice) {
      if (!parts[0]) fail("empty subscript", line);
      e->kids.push_back(std::move(parts[0]));
    } else {
      for (auto& p : parts) e->kids.push_back(std::move(p));
    }
    return e;
  }

  // "(a, b, key=c)" into e.kids (after the callee) and e.names (the keywords, last).
  void call_args(Expr& e) {
    expect_op("(");
    while (!is_op(")")) {
      if (is_op("*") || is_op("**")) {  // f(*list) spreads positionals, f(**dict) keywords
        const Token& star = next();
        auto spread = node(Expr::Spread, star.line);
        spread->kids.push_back(expression(true));
        if (star.s == "**") {
          e.names.push_back("**");
        } else if (!e.names.empty()) {
          fail("*args after a keyword argument");
        }
        e.kids.push_back(std::move(spread));
      } else if (cur().type == Token::Name && t_[k_ + 1].type == Token::Op && t_[k_ + 1].s == "=") {
        e.names.push_back(next().s);
        next();
        e.kids.push_back(expression(true));
      } else {
        if (!e.names.empty()) fail("a positional argument after a keyword argument");
        e.kids.push_back(expression(true));
      }
      if (!skip_op(",")) break;
    }
    expect_op(")");
  }

  ExprP filters(ExprP e) {
    for (;;) {
      const int line = cur().line;
      if (skip_op("|")) {
        auto f = node(Expr::Filter, line);
        f->name = expect_name();
        while (skip_op(".")) f->name += "." + expect_name();
        f->kids.push_back(std::move(e));
        if (is_op("(")) call_args(*f);
        e = std::move(f);
      } else if (skip_name("is")) {
        auto t = node(Expr::Test, line);
        t->negated = skip_name("not");
        t->name = expect_name();
        t->kids.push_back(std::move(e));
        if (is_op("(")) {
          call_args(*t);
        } else if ((cur().type == Token::Name || cur().type == Token::Str || cur().type == Token::Int ||
                    cur().type == Token::Float || is_op("[") || is_op("{")) &&
                   !is_name("else") && !is_name("or") && !is_name("and")) {
          if (is_name("is")) fail("tests cannot be chained with 'is'");
          t->kids.push_back(postfix(primary()));  // `x is divisibleby 3`, `x is sameas none`
        }
        e = std::move(t);
      } else if (is_op("(")) {
        auto c = node(Expr::Call, line);
        c->kids.push_back(std::move(e));
        call_args(*c);
        e = std::move(c);
      } else {
        return e;
      }
    }
  }

  const std::vector<Token>& t_;
  const std::string& name_;
  size_t k_ = 0;
  int depth_ = 0;
  int loops_ = 0;
  int loop_refs_ = 0;  // `loop` names parsed so far
};

// jinja2 refuses an unknown filter or test when it compiles the template, except inside an `if`
// statement or an inline if ("soft" there: only running it fails, so a template can guard an
// optional feature). A loop's or macro's body starts a new, strict frame, as in jinja2.
void check_names(const Expr& e, bool soft, const std::string& name) {
  soft = soft || e.kind == Expr::Cond;
  if (!soft && e.kind == Expr::Filter && !find_filter(e.name))
    throw TemplateError(name, e.line, fmt::format("no filter named '{}'", e.name));
  if (!soft && e.kind == Expr::Test && !find_test(e.name))
    throw TemplateError(name, e.line, fmt::format("no test named '{}'", e.name));
  for (const auto& k : e.kids)
    if (k) check_names(*k, soft, name);
}

void check_names(const Body& body, bool soft, const std::string& name) {
  for (const auto& s : body) {
    const bool here = soft || s->kind == Stmt::If;
    const bool inner = s->kind == Stmt::If ? true
                       : (s->kind == Stmt::For || s->kind == Stmt::Macro || s->kind == Stmt::SetBlock ||
                          s->kind == Stmt::CallBlock || s->kind == Stmt::FilterBlock)
                           ? false
                           : soft;
    for (size_t k = 0; k < s->exprs.size(); k++)
      if (s->exprs[k]) check_names(*s->exprs[k], s->kind == Stmt::For && k == 1 ? false : s->kind == Stmt::Macro ? false : here, name);
    for (const auto& b : s->bodies) check_names(b, inner, name);
  }
}

}  // namespace

Body parse(const std::vector<Token>& tokens, const std::string& name) {
  Body body = Parser(tokens, name).program();
  check_names(body, false, name);
  return body;
}

}  // namespace sky::jinja
