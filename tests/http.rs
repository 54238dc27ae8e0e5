//! The operators' endpoint: `/health` and Prometheus `/metrics` over a real HTTP exchange.

mod common;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_prometheus_metrics() {
    let server = start(test_config()).await;
    let http = server.http_addr.expect("http endpoint on by default");
    let (status, body) = http_get(http, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(status, 200);
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["status"], "ok");

    let mut sub = v4::connect(v4::options(tcp_addr(&server), "m-sub")).await;
    sub.subscribe("m/#", v4::QoS::AtLeastOnce).await;
    let p = v4::connect(v4::options(tcp_addr(&server), "m-pub")).await;
    for _ in 0..3 {
        p.client
            .publish("m/x", v4::QoS::AtLeastOnce, true, "v")
            .await
            .unwrap();
    }
    for _ in 0..3 {
        sub.next_publish().await;
    }
    let (status, body) = http_get(http, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(status, 200);
    let value = |name: &str| -> u64 {
        body.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing in:\n{body}"))
    };
    assert_eq!(value("switchyard_clients_connected"), 2);
    assert_eq!(value("switchyard_messages_received_total"), 3);
    assert!(value("switchyard_messages_sent_total") >= 3);
    assert_eq!(value("switchyard_subscriptions"), 1);
    assert_eq!(value("switchyard_retained_messages"), 1);
    assert!(body.contains("# TYPE switchyard_messages_received_total counter"));

    assert_eq!(http_get(http, "GET /nope HTTP/1.1\r\n\r\n").await.0, 404);
    assert_eq!(http_get(http, "POST /health HTTP/1.1\r\n\r\n").await.0, 405);
}
