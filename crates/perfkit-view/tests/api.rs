//! The viewer's answers without a browser or Python: slices of huge and
//! deep trees stay bounded, routes never reach files, exports escape names.

use perfkit_profile::{CallTree, FuncKey, Meta, Node, Profile, ThreadTree};
use perfkit_view::{export, Viewer};
use serde_json::Value;

fn node(func: u32, parent: u32, total: u64, own: u64) -> Node {
    Node {
        func,
        parent,
        calls: 1,
        own_ns: own,
        total_ns: total,
    }
}

fn profile(funcs: Vec<FuncKey>, nodes: Vec<Node>) -> Profile {
    let mut thread = ThreadTree::new("MainThread", 1, 1);
    thread.nodes.extend(nodes);
    let tree = CallTree {
        funcs,
        threads: vec![thread],
        meta: Meta {
            exact: true,
            ..Meta::default()
        },
    };
    Profile {
        stats: tree.to_stats(),
        tree,
    }
}

/// A complete 10-ary tree of `levels` levels below the root; leaves take 1 µs.
fn bushy(levels: u32) -> Profile {
    let funcs: Vec<FuncKey> = (0..10)
        .map(|i| FuncKey::new("m.py", i + 1, format!("f{i}")))
        .collect();
    let mut nodes = Vec::new();
    let mut level: Vec<u32> = vec![0];
    for depth in 0..levels {
        let leaf_total = 10u64.pow(levels - depth - 1) * 1000;
        let mut next = Vec::new();
        for &parent in &level {
            for k in 0..10 {
                nodes.push(node(
                    k,
                    parent,
                    leaf_total,
                    if depth + 1 == levels { leaf_total } else { 0 },
                ));
                next.push(nodes.len() as u32);
            }
        }
        level = next;
    }
    profile(funcs, nodes)
}

fn slice(viewer: &Viewer, query: &str) -> Value {
    let reply = viewer.handle("GET", &format!("/api/slice?{query}"));
    assert_eq!(reply.status, 200, "{}", reply.body);
    serde_json::from_str(&reply.body).unwrap()
}

#[test]
fn million_node_slices_stay_small_and_laid_out() {
    let viewer = Viewer::single("big".into(), bushy(6));
    let meta: Value = serde_json::from_str(&viewer.meta_json()).unwrap();
    assert_eq!(meta["views"][0]["nodes"], 1_111_110);
    // One pixel of a 4000-pixel chart: levels of frames 1/10,000 wide are culled.
    let s = slice(&viewer, "view=0&root=0&min=0.00025");
    assert_eq!(s["id"].as_array().unwrap().len(), 1 + 10 + 100 + 1000);
    let x = s["x"].as_array().unwrap();
    let w = s["w"].as_array().unwrap();
    assert_eq!(w[0].as_f64(), Some(1.0));
    let last = x.len() - 1;
    assert!((x[last].as_f64().unwrap() + w[last].as_f64().unwrap() - 1.0).abs() < 1e-9);
    // Without culling the slice is capped and says so.
    let all = slice(&viewer, "view=0&root=0&min=0");
    assert!(all["id"].as_array().unwrap().len() <= perfkit_view::api::MAX_SLICE_NODES + 1);
    assert_eq!(all["truncated"], true);
}

#[test]
fn ten_thousand_deep_recursion_slices_and_paths() {
    let depth = 10_000u32;
    let nodes: Vec<Node> = (0..depth)
        .map(|i| node(0, i, u64::from(depth - i) * 1000, 1000))
        .collect();
    let viewer = Viewer::single(
        "deep".into(),
        profile(vec![FuncKey::new("r.py", 1, "down")], nodes),
    );
    let s = slice(&viewer, "view=0&root=0&min=0&depth=20000");
    assert_eq!(
        s["d"].as_array().unwrap().last().unwrap(),
        &Value::from(depth)
    );
    assert_eq!(s["truncated"], false);
    // The default depth cuts it, and says so (helper-37: it did not).
    let shallow = slice(&viewer, "view=0&root=0&min=0");
    assert_eq!(shallow["truncated"], true);
    let bottom = slice(&viewer, &format!("view=0&root={depth}&depth=3"));
    assert_eq!(bottom["path"].as_array().unwrap().len(), depth as usize);
    // The export holds the whole depth: it has no server to ask for more.
    let html = export::html(&viewer);
    let (data, _) = embedded_data(&html);
    let d = data["slices"][0]["d"].as_array().unwrap();
    assert_eq!(d.last().unwrap(), &Value::from(depth));
    assert_eq!(data["slices"][0]["truncated"], false);
}

#[test]
fn only_the_page_and_the_api_exist() {
    let viewer = Viewer::single("small".into(), bushy(2));
    let page = viewer.handle("GET", "/");
    assert_eq!(page.status, 200);
    assert!(page.body.contains("data-state=\"loading\""));
    for path in [
        "/../Cargo.toml",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/api/../../etc/passwd",
        "//etc/passwd",
        "/api/meta/../../../etc/passwd",
        "/src/lib.rs",
        "/assets/app.js",
    ] {
        let r = viewer.handle("GET", path);
        assert_eq!(r.status, 404, "{path}");
    }
    assert_eq!(viewer.handle("POST", "/api/meta").status, 405);
    assert_eq!(
        viewer.handle("GET", "/api/slice?root=999999999").status,
        404
    );
    assert_eq!(viewer.handle("GET", "/api/stats?view=3").status, 400);
}

#[test]
fn export_escapes_names_that_look_like_markup() {
    let evil = "</script><script>alert(1)</script>";
    let p = profile(
        vec![FuncKey::new("<b>x.py", 1, evil)],
        vec![node(0, 0, 1000, 1000)],
    );
    let html = export::html(&Viewer::single("evil".into(), p));
    assert!(!html.contains(evil));
    assert!(!html.contains("<b>x.py"));
    let (data, _) = embedded_data(&html);
    assert_eq!(data["funcs"]["name"][0], evil);
}

#[test]
fn iframe_holds_the_page_as_one_attribute() {
    let evil = "\"></iframe><script>alert(1)</script>&amp;";
    let p = profile(
        vec![FuncKey::new("x.py\"'", 1, evil)],
        vec![node(0, 0, 1000, 1000)],
    );
    let page = export::html(&Viewer::single("evil".into(), p));
    let iframe = export::iframe(&page);
    let open = "srcdoc=\"";
    let start = iframe.find(open).unwrap() + open.len();
    // The attribute's value runs to the element's end: nothing in it closes
    // the quote or opens a tag.
    let value = iframe[start..].strip_suffix("\"></iframe>").unwrap();
    assert!(iframe[..start].starts_with("<iframe "));
    assert!(!value.contains(['"', '<', '>']));
    let unescaped = value
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&amp;", "&");
    assert_eq!(unescaped, page);
}

/// An export's embedded JSON, parsed, and the page after its element.
fn embedded_data(html: &str) -> (Value, &str) {
    let open = "type=\"application/json\">";
    let start = html.find(open).unwrap() + open.len();
    let end = start + html[start..].find("</script>").unwrap();
    let data = serde_json::from_str(&html[start..end]).unwrap();
    (data, &html[end + "</script>".len()..])
}

#[test]
fn export_keeps_names_that_hold_the_templates_markers() {
    // A name is data: the page's markers in it must neither take the script
    // (leaving the page without one) nor be filled in themselves.
    let name = "f/*SCRIPT*//*DATA*//*STYLE*/";
    let p = profile(
        vec![FuncKey::new("x.py", 1, name)],
        vec![node(0, 0, 1000, 1000)],
    );
    let html = export::html(&Viewer::single("markers".into(), p));
    let (data, script) = embedded_data(&html);
    assert_eq!(data["funcs"]["name"][0], name);
    assert!(script.trim_start().starts_with("<script>"));
    assert!(script.len() > 1000, "the viewer's script is in the page");
}

#[test]
fn diff_slices_carry_both_runs() {
    let before = bushy(2);
    let mut after = bushy(2);
    for n in after.tree.threads[0].nodes.iter_mut().skip(1) {
        n.total_ns *= 2;
        n.own_ns *= 2;
    }
    after.stats = after.tree.to_stats();
    let viewer = Viewer::diff("a".into(), before, "b".into(), after);
    let s = slice(&viewer, "view=0&root=0&min=0");
    let total = s["total"].as_array().unwrap();
    let btotal = s["btotal"].as_array().unwrap();
    for (a, b) in total.iter().zip(btotal).skip(1) {
        assert_eq!(a.as_u64().unwrap(), 2 * b.as_u64().unwrap());
    }
    let diff: Value = serde_json::from_str(&viewer.diff_json()).unwrap();
    assert_eq!(diff["f"].as_array().unwrap().len(), 10);
}

#[test]
fn flame_graph_svg_is_drawn_and_escaped() {
    let p = profile(
        vec![FuncKey::new("x.py", 1, "<img src=x onerror=alert(1)>")],
        vec![node(0, 0, 5000, 5000)],
    );
    let svg = String::from_utf8(export::flamegraph_svg(&p.tree, "t").unwrap()).unwrap();
    assert!(svg.starts_with("<?xml") || svg.contains("<svg"));
    assert!(!svg.contains("<img"));
    assert!(svg.contains("&lt;img"));
    let empty = profile(vec![], vec![]);
    assert!(export::flamegraph_svg(&empty.tree, "t").is_err());
}

#[test]
fn loopback_hosts_answered_include_the_bare_name_on_port_80() {
    use perfkit_view::server::allowed_hosts;
    let on = |a: &str| allowed_hosts(a.parse().unwrap(), "127.0.0.1");
    let hosts = on("127.0.0.1:80").unwrap();
    // helper-37: browsers send `Host: 127.0.0.1` for port 80, and got 403.
    assert!(hosts.iter().any(|h| h == "127.0.0.1") && hosts.iter().any(|h| h == "localhost"));
    let hosts = on("127.0.0.1:8080").unwrap();
    assert!(!hosts.iter().any(|h| h == "127.0.0.1" || h == "localhost"));
    assert!(hosts.iter().any(|h| h == "localhost:8080"));
    assert!(on("0.0.0.0:8080").is_none());
    // A name given to --host that resolves to loopback is answered as well.
    let named = allowed_hosts("127.0.0.1:8080".parse().unwrap(), "myhost").unwrap();
    assert!(named.iter().any(|h| h == "myhost:8080"));
    assert!(!hosts.iter().any(|h| h.starts_with("myhost")));
}

#[test]
fn edges_with_nan_times_are_sorted_not_a_panic() {
    // f0 called by 35 functions, some edges' cumulative time NaN (a fuzzed
    // pstats file): the sort's partial_cmp was no total order, the sort
    // panicked and /api/edges answered 500 for every function of the view.
    let n = 35u32;
    let funcs: Vec<FuncKey> = (0..=n)
        .map(|i| FuncKey::new("m.py", i + 1, format!("f{i}")))
        .collect();
    let mut nodes = Vec::new();
    for caller in 1..=n {
        nodes.push(node(caller, 0, 2000, 1000));
        nodes.push(node(0, nodes.len() as u32, 1000, 1000));
    }
    let mut p = profile(funcs, nodes);
    let f0 = p
        .stats
        .entries
        .iter_mut()
        .find(|e| e.func.name == "f0")
        .unwrap();
    assert_eq!(f0.callers.len(), n as usize);
    for (k, (_, edge)) in f0.callers.iter_mut().enumerate() {
        edge.ct = if k % 11 == 3 {
            f64::NAN
        } else {
            ((k * 7919) % 1000) as f64
        };
    }
    let viewer = Viewer::single("nan".into(), p);
    let funcs: Value = serde_json::from_str(&viewer.funcs_json()).unwrap();
    let id = |name: &str| {
        funcs["name"]
            .as_array()
            .unwrap()
            .iter()
            .position(|x| x == name)
            .unwrap()
    };
    for f in 0..=n as usize {
        let r = viewer.handle("GET", &format!("/api/edges?view=0&f={f}"));
        assert_eq!(r.status, 200, "f={f}: {}", r.body);
    }
    let r = viewer.handle("GET", &format!("/api/edges?view=0&f={}", id("f0")));
    let e: Value = serde_json::from_str(&r.body).unwrap();
    let ct: Vec<f64> = e["callers"]["ct"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(ct.len(), n as usize);
    // Largest first; a NaN is shown (and sorted) as 0.
    assert!(ct.windows(2).all(|w| w[0] >= w[1]), "{ct:?}");
    assert_eq!(ct.iter().filter(|&&x| x == 0.0).count(), 4);
}

#[test]
fn bad_numbers_in_parameters_are_400_not_a_default() {
    let viewer = Viewer::single("small".into(), bushy(2));
    for path in [
        "/api/stats?view=-1",
        "/api/stats?view=7",
        "/api/stats?view=1.5",
        "/api/stats?view=abc",
        "/api/stats?view=99999999999999999999999",
        "/api/slice?view=-1",
        "/api/slice?root=1e400",
        "/api/slice?root=-1",
        "/api/slice?root=2.5",
        "/api/slice?depth=x",
        "/api/slice?depth=-3",
        "/api/slice?min=nan",
        "/api/slice?min=-0.5",
        "/api/slice?min=inf",
        "/api/edges?view=0",
        "/api/edges?view=0&f=x",
        "/api/edges?view=-1&f=1",
    ] {
        let r = viewer.handle("GET", path);
        assert_eq!(r.status, 400, "{path}: {}", r.body);
        let body: Value = serde_json::from_str(&r.body).unwrap();
        assert!(body["error"].as_str().unwrap().len() > 3, "{path}");
    }
    // Absent parameters take their defaults; well-formed ones are answered.
    for path in [
        "/api/stats",
        "/api/slice",
        "/api/slice?view=0&root=0&depth=5&min=0.001",
        "/api/slice?view=0&root=1&depth=100000000000&min=2",
        "/api/slice?min=4e-7",
        "/api/edges?view=0&f=3",
    ] {
        assert_eq!(viewer.handle("GET", path).status, 200, "{path}");
    }
    let r = viewer.handle("POST", "/api/meta");
    assert_eq!(r.status, 405);
}

#[test]
fn a_slice_carries_its_roots_parent_total() {
    let viewer = Viewer::single("small".into(), bushy(3));
    let top = slice(&viewer, "view=0&root=0&min=0");
    assert_eq!(top["parent_total"], Value::Null);
    // Node 1 is a child of the view's root: its parent total is the view's.
    let total_of = |s: &Value, id: u64| {
        let k = s["id"]
            .as_array()
            .unwrap()
            .iter()
            .position(|x| x == id)
            .unwrap();
        s["total"][k].as_u64().unwrap()
    };
    let one = slice(&viewer, "view=0&root=1&min=0");
    assert_eq!(one["parent_total"].as_u64(), Some(total_of(&top, 0)));
    // A grandchild: its parent's total, not the view's.
    let child = top["id"].as_array().unwrap()[top["p"]
        .as_array()
        .unwrap()
        .iter()
        .position(|p| p == 1)
        .unwrap()]
    .as_u64()
    .unwrap();
    let deeper = slice(&viewer, &format!("view=0&root={child}&min=0"));
    assert_eq!(deeper["parent_total"].as_u64(), Some(total_of(&top, 1)));
    assert_ne!(total_of(&top, 1), total_of(&top, 0));
}

#[test]
fn threads_of_several_processes_name_their_pid_once() {
    let mut p = profile(
        vec![FuncKey::new("m.py", 1, "f")],
        vec![node(0, 0, 1000, 1000)],
    );
    // A perfkit.Parallel worker's thread, as adopted into its caller's profile.
    let mut worker = ThreadTree::new("worker process 7", 1, 7);
    worker.nodes.push(node(0, 0, 500, 500));
    p.tree.threads.push(worker);
    p.stats = p.tree.to_stats();
    let viewer = Viewer::single("p.prof".into(), p);
    let meta: Value = serde_json::from_str(&viewer.meta_json()).unwrap();
    let names: Vec<&str> = meta["views"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["all threads", "MainThread (pid 1)", "worker process 7"]
    );
}

#[test]
fn an_unknown_function_is_404_as_an_unknown_frame_is() {
    // /api/edges answered 200 with empty callers and callees for a function
    // id /api/funcs does not list, where /api/slice answers 404 for a frame
    // it does not know: the page could not tell a typo from a leaf.
    let viewer = Viewer::single("small".into(), bushy(2));
    let funcs: Value = serde_json::from_str(&viewer.funcs_json()).unwrap();
    let n = funcs["name"].as_array().unwrap().len();
    assert_eq!(
        viewer.handle("GET", "/api/slice?root=999999999").status,
        404
    );
    for f in [
        n.to_string(),
        "999999999".into(),
        "-1".into(),
        "4294967295".into(),
    ] {
        let r = viewer.handle("GET", &format!("/api/edges?view=0&f={f}"));
        assert_eq!(r.status, 404, "f={f}: {}", r.body);
        let body: Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(body["error"], format!("no function {f}"));
    }
    // Every function it lists is answered, with its callers or callees.
    let mut linked = 0;
    for f in 0..n {
        let r = viewer.handle("GET", &format!("/api/edges?view=0&f={f}"));
        assert_eq!(r.status, 200, "f={f}: {}", r.body);
        let e: Value = serde_json::from_str(&r.body).unwrap();
        linked += e["callers"]["f"].as_array().unwrap().len()
            + e["callees"]["f"].as_array().unwrap().len();
    }
    assert!(linked > 0);
}
