// Which names a frame hides from the outside until it assigns them, as jinja2's compiler decides
// (its idtracking). A frame is the template's top level, a loop body, a macro body, or the body of
// a call block, a filter block or a block set.
// Walking a frame's own statements in order (not the bodies of its loops and macros), the first
// mention of each name decides: a read first means "look outside" (as does an assignment inside
// an if); an assignment first means the frame's own variable, which starts as the
// enclosing frame's when some enclosing frame knows the name, and as undefined otherwise. So in
//   {% for m in messages %}{{ x }}{% endfor %}{% set x = 1 %}
// the loop prints nothing even when the caller passed x: the top level's x shadows it, unset yet.
#include <map>
#include <set>

#include "io/jinja/ast.h"

namespace sky::jinja {

namespace {

enum class Mode { Resolve, Alias, Fresh, Param };

struct Symbols {
  const Symbols* parent = nullptr;
  std::map<std::string, Mode> refs;  // the names this frame declares
  std::set<std::string> stores;

  bool known(const std::string& n) const {
    for (const Symbols* s = this; s; s = s->parent)
      if (s->refs.count(n)) return true;
    return false;
  }
  void load(const std::string& n) {
    if (!known(n)) refs[n] = Mode::Resolve;
  }
  void store(const std::string& n) {
    stores.insert(n);
    if (!refs.count(n)) refs[n] = parent && parent->known(n) ? Mode::Alias : Mode::Fresh;
  }
  void param(const std::string& n) {
    stores.insert(n);
    refs[n] = Mode::Param;
  }
  std::vector<std::string> fresh() const {
    std::vector<std::string> out;
    for (const auto& [n, m] : refs)
      if (m == Mode::Fresh) out.push_back(n);
    return out;
  }
};

void loads(const Expr* e, Symbols& s) {
  if (!e) return;
  if (e->kind == Expr::Name) s.load(e->name);
  for (const auto& k : e->kids) loads(k.get(), s);
}

void visit(const Body& body, Symbols& s);

// jinja2 keeps an if's branches apart, then treats a name any branch assigns (and the frame had
// not assigned before) as read from outside until assigned: the branch may not run.
void visit_if(const Stmt& st, Symbols& s) {
  for (const auto& cond : st.exprs) loads(cond.get(), s);  // the elif tests run in the if's frame too
  const auto stored_before = s.stores;
  for (const auto& b : st.bodies) {
    Symbols branch = s;
    visit(b, branch);
    for (const auto& [n, m] : branch.refs) s.refs[n] = m;
    s.stores.insert(branch.stores.begin(), branch.stores.end());
  }
  for (const auto& n : s.stores)
    if (!stored_before.count(n)) s.refs[n] = s.parent && s.parent->known(n) ? Mode::Alias : Mode::Resolve;
}

void visit(const Body& body, Symbols& s) {
  for (const auto& st : body) {
    switch (st->kind) {
      case Stmt::Output: loads(st->exprs[0].get(), s); break;
      case Stmt::If: visit_if(*st, s); break;
      case Stmt::For: loads(st->exprs[0].get(), s); break;  // the body is a frame of its own
      case Stmt::Set:
        loads(st->exprs[0].get(), s);
        for (const auto& n : st->names) s.store(n);
        break;
      case Stmt::SetAttr:
        loads(st->exprs[0].get(), s);
        s.load(st->names[0]);
        break;
      case Stmt::SetBlock:
      case Stmt::Macro: s.store(st->kind == Stmt::Macro ? st->text : st->names[0]); break;
      case Stmt::CallBlock:  // the call and the caller's defaults; the body is a frame of its own
        for (const auto& e : st->exprs) loads(e.get(), s);
        break;
      case Stmt::FilterBlock: loads(st->exprs[0].get(), s); break;  // the body is a frame of its own
      default: break;
    }
  }
}

void frames(Body& body, const Symbols& s);

// The frames inside `st` (whose enclosing frame's symbols are complete in `s`).
void child_frames(Stmt& st, const Symbols& s) {
  auto frame = [&](Body& b, const std::vector<std::string>& params, const Expr* filter) {
    Symbols c;
    c.parent = &s;
    for (const auto& p : params) c.param(p);
    loads(filter, c);
    visit(b, c);
    st.fresh.push_back(c.fresh());
    frames(b, c);
  };
  switch (st.kind) {
    case Stmt::For: {
      std::vector<std::string> params = st.names;
      params.push_back("loop");
      frame(st.bodies[0], params, st.exprs[1].get());
      if (st.bodies.size() > 1) frame(st.bodies[1], {}, nullptr);
      break;
    }
    case Stmt::Macro: {
      std::vector<std::string> params = st.names;
      params.push_back("caller");
      frame(st.bodies[0], params, nullptr);
      break;
    }
    case Stmt::SetBlock: frame(st.bodies[0], {}, nullptr); break;
    case Stmt::CallBlock: frame(st.bodies[0], st.names, nullptr); break;
    case Stmt::FilterBlock: frame(st.bodies[0], {}, nullptr); break;
    case Stmt::If:
      for (auto& b : st.bodies) frames(b, s);  // an if's bodies belong to the same frame
      break;
    default: break;
  }
}

void frames(Body& body, const Symbols& s) {
  for (auto& st : body) child_frames(*st, s);
}

}  // namespace

void analyze_scopes(Program& p) {
  Symbols root;
  visit(p.body, root);
  p.fresh = root.fresh();
  frames(p.body, root);
}

}  // namespace sky::jinja
