//! Server reflection (v1 and v1alpha, as grpcurl old and new ask) and health on both servers:
//! each lists exactly the services it serves.

mod common;

use common::{TestPeer, TestTracker};
use std::time::Duration;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{health_check_response::ServingStatus, HealthCheckRequest};

/// `services_v1` / `services_v1alpha`: the service names a server lists through that reflection
/// version (the generated types differ only by module, hence a macro).
macro_rules! list_services {
    ($name:ident, $version:ident) => {
        async fn $name(address: &str) -> Vec<String> {
            use tonic_reflection::pb::$version::server_reflection_client::ServerReflectionClient;
            use tonic_reflection::pb::$version::server_reflection_request::MessageRequest;
            use tonic_reflection::pb::$version::server_reflection_response::MessageResponse;
            use tonic_reflection::pb::$version::ServerReflectionRequest;
            let mut client = ServerReflectionClient::new(p2pshare::grpc::channel(address).unwrap());
            let request = ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::ListServices(String::new())),
            };
            let mut responses = client
                .server_reflection_info(tokio_stream::iter([request]))
                .await
                .unwrap()
                .into_inner();
            let response = responses.message().await.unwrap().unwrap();
            let Some(MessageResponse::ListServicesResponse(list)) = response.message_response
            else {
                panic!("unexpected reflection answer: {response:?}");
            };
            let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
            names.sort();
            names
        }
    };
}

list_services!(services_v1, v1);
list_services!(services_v1alpha, v1alpha);

fn expected(own: &str) -> Vec<String> {
    let mut names = vec![
        own.to_string(),
        "grpc.health.v1.Health".to_string(),
        "grpc.reflection.v1.ServerReflection".to_string(),
        "grpc.reflection.v1alpha.ServerReflection".to_string(),
    ];
    names.sort();
    names
}

async fn serving(address: &str, service: &str) -> ServingStatus {
    let mut client = HealthClient::new(p2pshare::grpc::channel(address).unwrap());
    let status = client
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    ServingStatus::try_from(status).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_server_reflects_and_reports_health_for_its_own_services() {
    let tracker = TestTracker::start(Duration::from_secs(10)).await;
    let peer = TestPeer::start("p", tracker.addr, &[]).await;
    for (address, own) in [
        (tracker.addr.to_string(), "p2pshare.tracker.v1.Tracker"),
        (peer.node.local_addr().to_string(), "p2pshare.peer.v1.Peer"),
    ] {
        assert_eq!(services_v1(&address).await, expected(own));
        assert_eq!(services_v1alpha(&address).await, expected(own));
        assert_eq!(serving(&address, own).await, ServingStatus::Serving);
        assert_eq!(serving(&address, "").await, ServingStatus::Serving);
    }
}
