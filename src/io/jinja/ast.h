#pragma once
// The parsed template (internal to io/jinja): the lexer's tokens, expressions and statements.
#include <memory>
#include <string>
#include <vector>

#include "io/jinja/value.h"

namespace sky::jinja {

struct Token {
  enum Type { Text, VarBegin, VarEnd, BlockBegin, BlockEnd, Name, Int, Float, Str, Op, Eof } type;
  std::string s;  // Text, Name, Str (unescaped), Op
  int64_t i = 0;
  double f = 0;
  int line = 1;
};

// Newlines normalized, one trailing newline dropped, whitespace control applied to the text
// tokens; comments are gone.
std::vector<Token> lex(std::string_view source, const std::string& name);

struct Expr;
using ExprP = std::unique_ptr<Expr>;

struct Expr {
  enum Kind {
    Lit,     // lit
    Name,    // name
    List,    // kids: items (tuple: a Python tuple)
    Tuple,
    Dict,    // kids: key, value, key, value ...
    Attr,    // kids[0].name
    Item,    // kids[0][kids[1]]
    Slice,   // kids[0][kids[1]:kids[2]:kids[3]], absent parts null
    Call,    // kids[0](positional..., keyword...): the last names.size() kids are keywords
    Filter,  // kids[0] | name(positional..., keyword...)
    Test,    // kids[0] is [not] name(...)
    Neg,
    Pos,
    Not,
    And,
    Or,
    Bin,   // kids[0] <name> kids[1]: + - * / // % ** ~
    Cmp,   // kids[0] names[0] kids[1] names[1] kids[2] ...: == != < > <= >= in notin
    Cond,    // kids[0] if kids[1] else kids[2] (null: undefined)
    Spread,  // a call's *kids[0] (positional) or **kids[0] (keyword, its name "**")
  } kind;
  int line = 1;
  Value lit;
  std::string name;
  std::vector<ExprP> kids;
  std::vector<std::string> names;
  bool negated = false;
};

struct Stmt;
using Body = std::vector<std::unique_ptr<Stmt>>;

struct Stmt {
  enum Kind {
    Text,      // text
    Output,    // {{ exprs[0] }}
    If,        // exprs: conditions; bodies: one per condition, then the else body
    For,       // names: targets; exprs: [iterable, filter or null]; bodies: [body, else]
    Set,       // names = exprs[0] (several names: unpacking)
    SetAttr,   // names[0].text = exprs[0]
    SetBlock,  // names[0] = rendered bodies[0]
    Macro,     // text: name; names: parameters; exprs: their defaults (null: none); bodies[0]
    // {% call(names) exprs[0] %}bodies[0]{% endcall %}: the macro call exprs[0] gets `caller`, which
    // renders bodies[0] with parameters `names` (defaults exprs[1...]). exprs[0] null: the body
    // renders in place, in a frame of its own (transformers' {% generation %}).
    CallBlock,
    FilterBlock,  // {% filter %}: exprs[0], a filter chain over the rendered bodies[0]
    Break,
    Continue,
  } kind;
  int line = 1;
  std::string text;
  std::vector<ExprP> exprs;
  std::vector<Body> bodies;
  std::vector<std::string> names;
  bool uses_loop = false;  // For: the body mentions `loop` (else the loop object is not built)
  // For, Macro, SetBlock, CallBlock, FilterBlock: per body, the names that body's frame holds undefined until it assigns
  // them, hiding any outer value (see scopes.cpp).
  std::vector<std::vector<std::string>> fresh;
};

// The name under which a filter block's chain finds its rendered body.
inline const char* const kFilterBodyName = "\x01body";

struct Program {
  std::string name;
  Body body;
  std::vector<std::string> fresh;  // the same for the template's top level
};

Body parse(const std::vector<Token>& tokens, const std::string& name);
// Fills the `fresh` lists of a parsed program (scopes.cpp).
void analyze_scopes(Program& p);

}  // namespace sky::jinja
