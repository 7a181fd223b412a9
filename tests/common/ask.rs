//! One raw wire request to a server, as a sender would make it (fixed sender and run ids):
//! for tests of the protocol's rules rather than of the drain.

use drain::wire;

use super::Server;

/// The `Drain-Sender` of [`ask`].
pub const SENDER: &str = "00000000000000000000000000000abc";
/// The `Drain-Run` of [`ask`].
pub const RUN: &str = "11111111111111111111111111111111";

/// The instance id of a server (its `instance-id` file).
pub fn instance_of(s: &Server) -> String {
    std::fs::read_to_string(s.data_dir.join("instance-id"))
        .unwrap()
        .trim()
        .to_string()
}

/// A `POST` to `s` at `path` with `body` and extra `headers`: (status, `Drain-Instance` of
/// the answer, body).
pub fn ask(
    s: &Server,
    path: &str,
    content_type: &str,
    body: Vec<u8>,
    headers: &[(&str, &str)],
) -> (u16, Option<String>, String) {
    let c = super::https_client(&s.cert, "127.0.0.1");
    post(&c, &s.dest(), path, content_type, body, headers)
}

/// As [`ask`], through client `c` to `addr` (a server or a balancer in front of it); extra
/// header lines are appended (a second line of the same header stays a line).
pub fn post(
    c: &reqwest::Client,
    addr: &str,
    path: &str,
    content_type: &str,
    body: Vec<u8>,
    headers: &[(&str, &str)],
) -> (u16, Option<String>, String) {
    let mut r = c
        .post(format!("https://{addr}{path}"))
        .header(wire::HDR_SENDER, SENDER)
        .header(wire::HDR_RUN, RUN)
        .header("content-type", content_type)
        .body(body);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let resp = r.send().await.expect("request");
        let st = resp.status().as_u16();
        let inst = resp
            .headers()
            .get(wire::HDR_INSTANCE)
            .map(|v| v.to_str().unwrap().to_string());
        (st, inst, resp.text().await.unwrap_or_default())
    })
}
