//! A failed `accept` does not end the server: with no file left to open,
//! a connection waits (accept fails with EMFILE) and is answered once files
//! are free again. (A binary of its own: it uses up this process's files.)

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use perfkit_profile::{CallTree, FuncKey, Meta, Node, Profile, ThreadTree};
use perfkit_view::{Server, Viewer};

fn viewer() -> Arc<Viewer> {
    let mut thread = ThreadTree::new("MainThread", 1, 1);
    thread.nodes.push(Node {
        func: 0,
        parent: 0,
        calls: 1,
        own_ns: 1000,
        total_ns: 1000,
    });
    let tree = CallTree {
        funcs: vec![FuncKey::new("m.py", 1, "main".to_string())],
        threads: vec![thread],
        meta: Meta {
            exact: true,
            ..Meta::default()
        },
    };
    Arc::new(Viewer::single(
        "t.prof".into(),
        Profile {
            stats: tree.to_stats(),
            tree,
        },
    ))
}

#[test]
fn a_connection_that_found_no_file_is_answered_once_files_are_free() {
    let server = Server::start(viewer(), "127.0.0.1", 0).unwrap();
    let request = format!(
        "GET /api/meta HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        server.addr()
    );
    let mut held = Vec::new();
    while let Ok(f) = std::fs::File::open("/dev/null") {
        held.push(f);
        if held.len() > 1 << 20 {
            return; // (no file limit to reach)
        }
    }
    // One descriptor for this end of the connection; none for the server's.
    held.pop();
    let mut waiting = TcpStream::connect(server.addr()).unwrap();
    waiting.write_all(request.as_bytes()).unwrap();
    std::thread::sleep(Duration::from_millis(500)); // accept fails meanwhile
    drop(held);
    waiting
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut answer = String::new();
    waiting.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    // And later connections too.
    let mut next = TcpStream::connect(server.addr()).unwrap();
    next.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    next.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
}
