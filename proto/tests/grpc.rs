//! The generated gRPC contract works over a real loopback socket: a client
//! stream of Raft batches arrives intact, and an admin call round-trips.

use haven_proto::grpc::{
    self,
    admin_client::AdminClient,
    admin_server::{Admin, AdminServer},
    raft_transport_client::RaftTransportClient,
    raft_transport_server::{RaftTransport, RaftTransportServer},
};
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

#[derive(Default)]
struct Node;

#[tonic::async_trait]
impl RaftTransport for Node {
    async fn send(
        &self,
        req: Request<Streaming<grpc::RaftBatch>>,
    ) -> Result<Response<grpc::SendAck>, Status> {
        let mut stream = req.into_inner();
        let mut received = 0;
        while let Some(batch) = stream.next().await {
            let batch = batch?;
            if batch.cluster_id != "lab" {
                return Err(Status::permission_denied("foreign cluster"));
            }
            received += batch.messages.len() as u64;
        }
        Ok(Response::new(grpc::SendAck { received }))
    }

    async fn snapshot(
        &self,
        req: Request<Streaming<grpc::SnapshotChunk>>,
    ) -> Result<Response<grpc::SendAck>, Status> {
        let mut stream = req.into_inner();
        let mut bytes = 0;
        while let Some(chunk) = stream.next().await {
            bytes += chunk?.data.len() as u64;
        }
        Ok(Response::new(grpc::SendAck { received: bytes }))
    }
}

type Reply<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl Admin for Node {
    async fn status(&self, _: Request<grpc::StatusRequest>) -> Reply<grpc::StatusReply> {
        Ok(Response::new(grpc::StatusReply {
            node_id: 7,
            mode: grpc::ReplicationMode::Local as i32,
            ..Default::default()
        }))
    }
    async fn list_bindings(
        &self,
        _: Request<grpc::ListBindingsRequest>,
    ) -> Reply<grpc::ListBindingsReply> {
        Err(Status::unimplemented("test"))
    }
    async fn get_binding(&self, _: Request<grpc::GetBindingRequest>) -> Reply<grpc::Binding> {
        Err(Status::not_found("no such binding"))
    }
    async fn remove_binding(
        &self,
        _: Request<grpc::RemoveBindingRequest>,
    ) -> Reply<grpc::RemoveBindingReply> {
        Err(Status::unimplemented("test"))
    }
    async fn drain(&self, _: Request<grpc::DrainRequest>) -> Reply<grpc::DrainReply> {
        Err(Status::unimplemented("test"))
    }
    async fn transfer_leadership(
        &self,
        _: Request<grpc::TransferLeadershipRequest>,
    ) -> Reply<grpc::TransferLeadershipReply> {
        Err(Status::unimplemented("test"))
    }
    async fn add_member(&self, _: Request<grpc::AddMemberRequest>) -> Reply<grpc::MemberReply> {
        Err(Status::unimplemented("test"))
    }
    async fn remove_member(
        &self,
        _: Request<grpc::RemoveMemberRequest>,
    ) -> Reply<grpc::MemberReply> {
        Err(Status::unimplemented("test"))
    }
}

#[tokio::test]
async fn raft_batches_and_admin_calls_cross_a_real_socket() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(RaftTransportServer::new(Node))
            .add_service(AdminServer::new(Node))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let url = format!("http://{addr}");

    let mut raft = RaftTransportClient::connect(url.clone()).await.unwrap();
    let batches = (0..10).map(|i| grpc::RaftBatch {
        cluster_id: "lab".into(),
        from: 1,
        to: 2,
        messages: vec![vec![i as u8; 100]; 3],
    });
    let ack = raft.send(tokio_stream::iter(batches)).await.unwrap();
    assert_eq!(ack.into_inner().received, 30);

    // A batch from another cluster is refused, not silently accepted.
    let foreign = grpc::RaftBatch {
        cluster_id: "other".into(),
        ..Default::default()
    };
    let err = raft.send(tokio_stream::iter([foreign])).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);

    let mut admin = AdminClient::connect(url).await.unwrap();
    let status = admin
        .status(grpc::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.node_id, 7);
    assert_eq!(status.mode(), grpc::ReplicationMode::Local);
    let missing = admin
        .get_binding(grpc::GetBindingRequest::default())
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    server.abort();
}
