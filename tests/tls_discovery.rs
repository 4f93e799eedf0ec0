//! Endpoint discovery (`yandex.cloud.endpoint.ApiEndpointService`) and gRPC reflection.
//!
//! Discovery answers without credentials: the Python SDK calls `List` before it has any (its
//! auth plugin sends no header to this service), so these calls carry no token on purpose.

mod common;

use common::tls::{Ca, Mtls, TlsClient, TlsDir};
use common::{Daemon, TestToken};
use p11kms::api::yandex::grpc::pb::yandex::cloud::endpoint::api_endpoint_service_client::ApiEndpointServiceClient;
use p11kms::api::yandex::grpc::pb::yandex::cloud::endpoint::{
    GetApiEndpointRequest, ListApiEndpointsRequest,
};
use tonic::transport::Channel;
use tonic::Code;

const IDS: [&str; 4] = ["kms", "kms-crypto", "operation", "iam"];

async fn list(channel: Channel) -> Vec<(String, String)> {
    let mut endpoints: Vec<_> = ApiEndpointServiceClient::new(channel)
        .list(ListApiEndpointsRequest::default())
        .await
        .expect("List without credentials")
        .into_inner()
        .endpoints
        .into_iter()
        .map(|e| (e.id, e.address))
        .collect();
    endpoints.sort();
    endpoints
}

fn expected(address: &str) -> Vec<(String, String)> {
    let mut want: Vec<_> = IDS
        .iter()
        .map(|id| ((*id).to_string(), address.to_string()))
        .collect();
    want.sort();
    want
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_advertises_the_bound_address_without_credentials() {
    let token = TestToken::dev();
    let mut daemon = Daemon::serve(&token, &[]);
    let channel = daemon.channel().await;
    let address = daemon.addr().to_string();
    assert_eq!(list(channel.clone()).await, expected(&address));

    let mut client = ApiEndpointServiceClient::new(channel);
    for id in IDS {
        let endpoint = client
            .get(GetApiEndpointRequest {
                api_endpoint_id: id.to_string(),
            })
            .await
            .unwrap_or_else(|s| panic!("Get {id}: {s}"))
            .into_inner();
        assert_eq!(
            (endpoint.id.as_str(), endpoint.address.as_str()),
            (id, address.as_str())
        );
    }
    let unknown = client
        .get(GetApiEndpointRequest {
            api_endpoint_id: "compute".into(),
        })
        .await
        .expect_err("an id this gateway does not serve");
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");
    assert!(unknown.message().contains("compute"), "{unknown:?}");
    let empty = client
        .get(GetApiEndpointRequest::default())
        .await
        .expect_err("an empty id");
    assert_eq!(empty.code(), Code::InvalidArgument, "{empty:?}");
    assert_eq!(daemon.sigterm().await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_advertises_the_configured_name_over_tls() {
    let ca = Ca::new("p11kms test CA");
    let (dir, _) = TlsDir::new(&ca);
    let token = TestToken::dev();
    token.set_server("tls", dir.config(Mtls::Off));
    token.set_server("advertise_address", "localhost:8443");
    let daemon = Daemon::serve(&token, &[]);
    let conn = TlsClient::new(&ca)
        .verifying("localhost")
        .channel(daemon.addr())
        .await
        .expect("TLS channel");
    assert_eq!(list(conn.channel).await, expected("localhost:8443"));
}

#[test]
fn a_malformed_advertise_address_is_a_config_error() {
    let token = TestToken::dev();
    for bad in [
        "kms.example.com",
        ":443",
        "kms.example.com:https",
        "kms.example.com:0",
    ] {
        token.set_server("advertise_address", bad);
        Daemon::serve_expecting_failure(&token, &[])
            .assert_failed()
            .assert_stderr_has(&["server.advertise_address", "host:port"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_answers_in_v1_and_v1alpha() {
    use tokio_stream::StreamExt as _;
    use tonic_reflection::pb::{v1, v1alpha};

    let token = TestToken::dev();
    let daemon = Daemon::serve(&token, &[]);
    let wanted = [
        "yandex.cloud.kms.v1.asymmetricsignature.AsymmetricSignatureCryptoService",
        "yandex.cloud.endpoint.ApiEndpointService",
    ];

    let mut v1_client =
        v1::server_reflection_client::ServerReflectionClient::new(daemon.auth_channel().await);
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut answers = v1_client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("v1 reflection")
        .into_inner();
    let answer = answers.next().await.expect("an answer").expect("v1 answer");
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        answer.message_response
    else {
        panic!("v1: not a service list: {answer:?}")
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    for want in wanted {
        assert!(
            names.iter().any(|n| n == want),
            "v1 lacks {want}: {names:?}"
        );
    }

    let mut alpha =
        v1alpha::server_reflection_client::ServerReflectionClient::new(daemon.auth_channel().await);
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let mut answers = alpha
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("v1alpha reflection")
        .into_inner();
    let answer = answers
        .next()
        .await
        .expect("an answer")
        .expect("v1alpha answer");
    let Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        answer.message_response
    else {
        panic!("v1alpha: not a service list: {answer:?}")
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    for want in wanted {
        assert!(
            names.iter().any(|n| n == want),
            "v1alpha lacks {want}: {names:?}"
        );
    }
}
