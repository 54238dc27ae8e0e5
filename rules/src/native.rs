//! `when` predicates evaluated in Rust.
//!
//! Most filters analysts write compare a message field or a JSON payload value with a literal:
//! `m.json.temp > 30.0 && m.qos == 1`. Calling into Rhai for that costs more than routing the
//! message. At load time such a closure's syntax tree is translated into a small expression
//! tree evaluated here without allocating. The translation only covers what it can answer
//! exactly as Rhai would; whenever a value is missing or of a type it does not handle (a
//! non-JSON payload, a missing key, a string compared with a number) it answers "don't know"
//! and Rhai evaluates the closure as written, errors and all.

use rhai::{ASTNode, Expr, FnPtr, Stmt, AST};
use std::cell::OnceCell;
use std::cmp::Ordering;
use std::sync::Arc;
use switchyard_core::hooks::ClientInfo;
use switchyard_core::message::Message;

/// A message as native predicates read it; the payload is parsed as JSON at most once.
pub struct MessageView<'a> {
    pub client: &'a Arc<ClientInfo>,
    pub msg: &'a Arc<Message>,
    json: OnceCell<Option<serde_json::Value>>,
}

impl<'a> MessageView<'a> {
    pub fn new(client: &'a Arc<ClientInfo>, msg: &'a Arc<Message>) -> Self {
        Self {
            client,
            msg,
            json: OnceCell::new(),
        }
    }

    fn json(&self) -> Option<&serde_json::Value> {
        self.json
            .get_or_init(|| serde_json::from_slice(&self.msg.payload).ok())
            .as_ref()
    }
}

pub struct Predicate {
    root: Node,
    reads_json: bool,
}

#[derive(Debug)]
enum Node {
    Const(Literal),
    Field(Field),
    /// `m.level(n)`
    Level(usize),
    /// `m.json.a.b`, `m.json["a b"]`
    Json(Box<[Box<str>]>),
    Compare(Op, Box<Node>, Box<Node>),
    Not(Box<Node>),
    And(Box<[Node]>),
    Or(Box<[Node]>),
}

#[derive(Debug)]
enum Literal {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Box<str>),
}

#[derive(Debug, Clone, Copy)]
enum Field {
    Topic,
    ClientId,
    Username,
    Listener,
    Qos,
    Retain,
    Size,
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, Copy)]
enum Val<'a> {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(&'a str),
}

impl Predicate {
    /// The native form of closure `when` from `ast`, or `None` when it does more than native
    /// evaluation covers (Rhai then runs it every time).
    pub fn compile(ast: &AST, when: &FnPtr) -> Option<Predicate> {
        if when.is_curried() {
            // Captured variables: values only Rhai knows.
            return None;
        }
        let name = when.fn_name();
        let def = ast
            .iter_fn_def()
            .find(|f| f.name.as_str() == name && f.params.len() == 1)?;
        let param = def.params.first()?.as_str();
        // The body's type is private to Rhai. Walking the script's functions reaches each
        // function's top-level statements (nodes whose path has one element), one function
        // after the other; a body's position is that of its first statement. So this body's
        // statements run from its start to the next function's start.
        let functions = ast.clone_functions_only();
        let ours = def.body.start_position();
        let starts: Vec<rhai::Position> = functions
            .iter_fn_def()
            .map(|f| f.body.start_position())
            .filter(|p| !p.is_none())
            .collect();
        if ours.is_none() || starts.iter().filter(|p| **p == ours).count() != 1 {
            return None;
        }
        let mut inside = false;
        let mut statements = 0;
        let mut compiled = None;
        functions.walk(&mut |path: &[ASTNode]| {
            if let [ASTNode::Stmt(stmt)] = path {
                let at = stmt.position();
                if at == ours {
                    inside = true;
                } else if starts.contains(&at) {
                    inside = false;
                }
                if !inside {
                    return true;
                }
                statements += 1;
                compiled = match stmt {
                    Stmt::Expr(e) => compile_expr(e, param),
                    Stmt::FnCall(call, _) => compile_call(call, param),
                    _ => None,
                };
            }
            true
        });
        if statements != 1 {
            return None;
        }
        let root = compiled?;
        Some(Predicate {
            reads_json: root.reads_json(),
            root,
        })
    }

    /// `Some(passed)` when answered natively, `None` when Rhai must decide.
    pub fn eval(&self, view: &MessageView<'_>) -> Option<bool> {
        match eval(&self.root, view)? {
            Val::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// Whether evaluation parses the payload (its cost then grows with the payload).
    pub fn reads_json(&self) -> bool {
        self.reads_json
    }
}

impl Node {
    fn reads_json(&self) -> bool {
        match self {
            Node::Json(_) => true,
            Node::Const(_) | Node::Field(_) | Node::Level(_) => false,
            Node::Compare(_, a, b) => a.reads_json() || b.reads_json(),
            Node::Not(a) => a.reads_json(),
            Node::And(terms) | Node::Or(terms) => terms.iter().any(Node::reads_json),
        }
    }
}

fn compile_expr(e: &Expr, param: &str) -> Option<Node> {
    Some(match e {
        Expr::BoolConstant(b, _) => Node::Const(Literal::Bool(*b)),
        Expr::IntegerConstant(i, _) => Node::Const(Literal::Int(*i)),
        Expr::FloatConstant(f, _) => Node::Const(Literal::Float(**f)),
        Expr::StringConstant(s, _) => Node::Const(Literal::Str(s.as_str().into())),
        Expr::FnCall(call, _) => compile_call(call, param)?,
        Expr::And(terms, _) => Node::And(
            terms
                .iter()
                .map(|t| compile_expr(t, param))
                .collect::<Option<_>>()?,
        ),
        Expr::Or(terms, _) => Node::Or(
            terms
                .iter()
                .map(|t| compile_expr(t, param))
                .collect::<Option<_>>()?,
        ),
        Expr::Dot(chain, _, _) => {
            if !is_param(&chain.lhs, param) {
                return None;
            }
            compile_access(&chain.rhs)?
        }
        _ => return None,
    })
}

fn is_param(e: &Expr, param: &str) -> bool {
    matches!(e, Expr::Variable(v, _, _) if v.1.as_str() == param && v.2.is_empty())
}

fn compile_call(call: &rhai::FnCallExpr, param: &str) -> Option<Node> {
    // Only the built-in operators: a call to anything else is Rhai's business.
    if call.op_token.is_none() || !call.namespace.is_empty() {
        return None;
    }
    let op = match call.name.as_str() {
        "!" => {
            let [arg] = call.args.as_slice() else {
                return None;
            };
            return Some(Node::Not(Box::new(compile_expr(arg, param)?)));
        }
        "==" => Op::Eq,
        "!=" => Op::Ne,
        "<" => Op::Lt,
        "<=" => Op::Le,
        ">" => Op::Gt,
        ">=" => Op::Ge,
        _ => return None,
    };
    let [a, b] = call.args.as_slice() else {
        return None;
    };
    Some(Node::Compare(
        op,
        Box::new(compile_expr(a, param)?),
        Box::new(compile_expr(b, param)?),
    ))
}

/// What follows `m.`: a field, `level(n)`, or `json` and a path of keys.
fn compile_access(rhs: &Expr) -> Option<Node> {
    if let Expr::MethodCall(call, _) = rhs {
        return match (call.name.as_str(), call.args.as_slice()) {
            ("level", [Expr::IntegerConstant(n, _)]) => {
                Some(Node::Level(usize::try_from(*n).ok()?))
            }
            _ => None,
        };
    }
    let mut path = Vec::new();
    flatten_path(rhs, &mut path)?;
    let (first, keys) = path.split_first()?;
    if first.as_ref() == "json" {
        return Some(Node::Json(keys.to_vec().into()));
    }
    if !keys.is_empty() {
        return None;
    }
    let field = match first.as_ref() {
        "topic" => Field::Topic,
        "clientid" => Field::ClientId,
        "username" => Field::Username,
        "listener" => Field::Listener,
        "qos" => Field::Qos,
        "retain" => Field::Retain,
        "size" => Field::Size,
        _ => return None,
    };
    Some(Node::Field(field))
}

/// `a.b["c"].d` as `[a, b, c, d]`; anything but properties and string keys is not a path.
fn flatten_path(e: &Expr, out: &mut Vec<Box<str>>) -> Option<()> {
    match e {
        Expr::Property(p, _) => out.push(p.2.as_str().into()),
        Expr::Dot(chain, _, _) => {
            flatten_path(&chain.lhs, out)?;
            flatten_path(&chain.rhs, out)?;
        }
        Expr::Index(chain, _, _) => {
            flatten_path(&chain.lhs, out)?;
            let Expr::StringConstant(key, _) = &chain.rhs else {
                return None;
            };
            out.push(key.as_str().into());
        }
        _ => return None,
    }
    Some(())
}

fn eval<'a>(node: &'a Node, view: &'a MessageView<'_>) -> Option<Val<'a>> {
    Some(match node {
        Node::Const(Literal::Bool(b)) => Val::Bool(*b),
        Node::Const(Literal::Int(i)) => Val::Int(*i),
        Node::Const(Literal::Float(f)) => Val::Float(*f),
        Node::Const(Literal::Str(s)) => Val::Str(s),
        Node::Field(f) => field(*f, view)?,
        Node::Level(n) => Val::Str(view.msg.topic.split('/').nth(*n)?),
        Node::Json(path) => {
            let mut v = view.json()?;
            for key in path.iter() {
                v = v.as_object()?.get(key.as_ref())?;
            }
            json_scalar(v)?
        }
        Node::Compare(op, a, b) => Val::Bool(compare(*op, eval(a, view)?, eval(b, view)?)?),
        Node::Not(a) => match eval(a, view)? {
            Val::Bool(b) => Val::Bool(!b),
            _ => return None,
        },
        Node::And(terms) => {
            for t in terms.iter() {
                match eval(t, view)? {
                    Val::Bool(true) => {}
                    Val::Bool(false) => return Some(Val::Bool(false)),
                    _ => return None,
                }
            }
            Val::Bool(true)
        }
        Node::Or(terms) => {
            for t in terms.iter() {
                match eval(t, view)? {
                    Val::Bool(true) => return Some(Val::Bool(true)),
                    Val::Bool(false) => {}
                    _ => return None,
                }
            }
            Val::Bool(false)
        }
    })
}

fn field<'a>(f: Field, view: &'a MessageView<'_>) -> Option<Val<'a>> {
    Some(match f {
        Field::Topic => Val::Str(&view.msg.topic),
        Field::ClientId => Val::Str(&view.client.client_id),
        // No username is `()` in Rhai.
        Field::Username => Val::Str(view.client.username.as_deref()?),
        Field::Listener => Val::Str(&view.client.listener),
        Field::Qos => Val::Int(view.msg.qos as i64),
        Field::Retain => Val::Bool(view.msg.retain),
        Field::Size => Val::Int(i64::try_from(view.msg.payload.len()).ok()?),
    })
}

/// JSON scalars as Rhai sees them after `rhai::serde::to_dynamic`; null, arrays and objects
/// are left to Rhai.
fn json_scalar(v: &serde_json::Value) -> Option<Val<'_>> {
    Some(match v {
        serde_json::Value::Bool(b) => Val::Bool(*b),
        serde_json::Value::String(s) => Val::Str(s),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Val::Int(i),
            None => Val::Float(n.as_f64()?),
        },
        _ => return None,
    })
}

/// Rhai's built-in comparisons: integers, floats (mixed with integers as floats), strings in
/// byte order, booleans for equality. Anything else is Rhai's to answer.
fn compare(op: Op, a: Val<'_>, b: Val<'_>) -> Option<bool> {
    let ord = match (a, b) {
        (Val::Int(x), Val::Int(y)) => x.cmp(&y),
        (Val::Float(x), Val::Float(y)) => x.partial_cmp(&y)?,
        (Val::Int(x), Val::Float(y)) => (x as f64).partial_cmp(&y)?,
        (Val::Float(x), Val::Int(y)) => x.partial_cmp(&(y as f64))?,
        (Val::Str(x), Val::Str(y)) => x.cmp(y),
        (Val::Bool(x), Val::Bool(y)) => {
            return match op {
                Op::Eq => Some(x == y),
                Op::Ne => Some(x != y),
                _ => None,
            }
        }
        _ => return None,
    };
    Some(match op {
        Op::Eq => ord == Ordering::Equal,
        Op::Ne => ord != Ordering::Equal,
        Op::Lt => ord == Ordering::Less,
        Op::Le => ord != Ordering::Greater,
        Op::Gt => ord == Ordering::Greater,
        Op::Ge => ord != Ordering::Less,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::script::{self, Msg};
    use rhai::Dynamic;
    use switchyard_core::protocol::QoS;

    fn client(username: Option<&str>) -> Arc<ClientInfo> {
        Arc::new(ClientInfo {
            client_id: "sensor-1".into(),
            username: username.map(Into::into),
            peer_addr: ([127, 0, 0, 1], 5000).into(),
            protocol: switchyard_core::protocol::ProtocolVersion::V5,
            listener: "tcp".into(),
            cert_common_name: None,
            attributes: Vec::new(),
            extension: Default::default(),
        })
    }

    fn messages() -> Vec<(Arc<ClientInfo>, Arc<Message>)> {
        let payloads: &[&[u8]] = &[
            br#"{"temp": 31.5, "n": 7, "site": "north", "ok": true, "deep": {"x": 2}, "a b": 3}"#,
            br#"{"temp": 30, "n": 7.0, "site": "south", "ok": false, "deep": 5, "nul": null}"#,
            br#"{"temp": "hot", "big": 18446744073709551615, "arr": [1, 2]}"#,
            b"not json",
            b"",
        ];
        let mut out = Vec::new();
        for (i, p) in payloads.iter().enumerate() {
            for (topic, qos, retain) in [
                ("plant/1/a/telemetry", QoS::AtMostOnce, false),
                ("a", QoS::AtLeastOnce, true),
            ] {
                let c = client(if i % 2 == 0 { Some("alice") } else { None });
                out.push((c, Arc::new(Message::new(topic, &p[..], qos, retain))));
            }
        }
        out
    }

    const NATIVE: &[&str] = &[
        "|m| false",
        "|m| true",
        "|m| m.size > 10",
        "|m| m.size <= 0",
        "|m| m.json.temp > 30.0",
        "|m| m.json.temp >= 30",
        "|m| m.json.n == 7",
        "|m| m.json.n != 7.0",
        "|m| m.json.site == \"north\" && !m.retain",
        "|m| m.json.ok || m.qos >= 1",
        "|m| m.json.ok == true",
        "|m| m.json.deep.x < 3",
        "|m| m.json[\"a b\"] == 3",
        "|m| m.json.big > 1",
        "|m| m.topic == \"a\" || m.qos == 1",
        "|m| m.topic < \"b\"",
        "|m| m.clientid == \"sensor-1\" && m.username == \"alice\"",
        "|m| m.listener != \"ws\"",
        "|m| m.level(1) == \"1\"",
        "|x| x.qos == 0 && (x.size > 5 || x.retain)",
        "|m| 5 < m.size",
        "|m| m.json.temp > 30.0 && m.qos == 1 && m.level(1) != \"skip\"",
    ];

    /// Shapes left to Rhai: method calls other than `level`, captured variables, blocks.
    const RHAI_ONLY: &[&str] = &[
        "|m| m.text.contains(\"x\")",
        "|m| m.json.temp + 1 > 30",
        "|m| { let t = m.json.temp; t > 30 }",
        "|m| limit < m.size",
        "|m| m.size > limit",
        "|m| m.payload.len() > 3",
        "|m| { m.qos == 1; m.qos == 0 }",
    ];

    fn rule_when(engine: &rhai::Engine, src: &str) -> (AST, FnPtr) {
        let ast = engine
            .compile(format!("let limit = 3; let f = {src}; f"))
            .unwrap_or_else(|e| panic!("{src}: {e}"));
        let f: FnPtr = engine
            .eval_ast(&ast)
            .unwrap_or_else(|e| panic!("{src}: {e}"));
        (ast, f)
    }

    /// Wherever native evaluation answers, Rhai gives the same answer; and it does answer for
    /// the common shapes.
    #[test]
    fn native_answers_match_rhai_on_every_message() {
        let engine = script::build_engine(&crate::RulesConfig::default());
        let msgs = messages();
        for src in NATIVE {
            let (ast, f) = rule_when(&engine, src);
            let p = Predicate::compile(&ast, &f)
                .unwrap_or_else(|| panic!("{src} should compile natively"));
            let mut answered = 0;
            for (c, m) in &msgs {
                let view = MessageView::new(c, m);
                let rhai: Result<Dynamic, _> = f.call(
                    &engine,
                    &ast,
                    (Dynamic::from(Msg::new(c.clone(), m.clone())),),
                );
                if let Some(native) = p.eval(&view) {
                    answered += 1;
                    let rhai = rhai.unwrap_or_else(|e| {
                        panic!("{src} on {}: native {native}, Rhai {e}", m.topic)
                    });
                    assert_eq!(
                        rhai.as_bool().ok(),
                        Some(native),
                        "{src} on {} {:?}",
                        m.topic,
                        String::from_utf8_lossy(&m.payload)
                    );
                }
            }
            assert!(answered > 0, "{src}: never answered natively");
        }
    }

    /// Several closures in one script: each compiles to its own body, not a neighbour's.
    #[test]
    fn each_closure_of_a_file_compiles_to_its_own_body() {
        let engine = script::build_engine(&crate::RulesConfig::default());
        let ast = engine
            .compile(
                "let a = |m| m.qos == 1;\nlet b = |m| m.json.readings.map(|r| r > 1);\nlet c = |m| m.qos == 0; [a, b, c]",
            )
            .unwrap_or_else(|e| panic!("{e}"));
        let fns: rhai::Array = engine.eval_ast(&ast).unwrap_or_else(|e| panic!("{e}"));
        let fns: Vec<FnPtr> = fns.into_iter().filter_map(|f| f.try_cast()).collect();
        let [a, b, c] = fns.as_slice() else {
            panic!("three closures")
        };
        let c1 = client(None);
        let m = Arc::new(Message::new("t", &b"{}"[..], QoS::AtLeastOnce, false));
        let view = MessageView::new(&c1, &m);
        let eval = |f: &FnPtr| Predicate::compile(&ast, f).map(|p| p.eval(&view));
        assert_eq!(eval(a), Some(Some(true)));
        assert!(
            eval(b).is_none(),
            "method calls and nested closures are Rhai's"
        );
        assert_eq!(eval(c), Some(Some(false)));
    }

    #[test]
    fn other_shapes_are_left_to_rhai() {
        let engine = script::build_engine(&crate::RulesConfig::default());
        for src in RHAI_ONLY {
            let (ast, f) = rule_when(&engine, src);
            assert!(
                Predicate::compile(&ast, &f).is_none(),
                "{src} must not compile natively"
            );
        }
    }

    #[test]
    fn missing_and_mistyped_values_defer_to_rhai() {
        let engine = script::build_engine(&crate::RulesConfig::default());
        let (ast, f) = rule_when(&engine, "|m| m.json.temp > 30");
        let p = Predicate::compile(&ast, &f).unwrap_or_else(|| panic!("compiles"));
        assert!(p.reads_json());
        let c = client(None);
        for payload in [
            &b"not json"[..],
            br#"{"temp": "hot"}"#,
            br#"{"other": 1}"#,
            b"[1]",
        ] {
            let m = Arc::new(Message::new("t", payload, QoS::AtMostOnce, false));
            assert_eq!(p.eval(&MessageView::new(&c, &m)), None);
        }
        let m = Arc::new(Message::new(
            "t",
            &br#"{"temp": 31}"#[..],
            QoS::AtMostOnce,
            false,
        ));
        assert_eq!(p.eval(&MessageView::new(&c, &m)), Some(true));
    }
}
