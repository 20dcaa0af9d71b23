//! The UDP side of `skein whoami --udp`: each datagram is answered with the line
//! `Hostname: H Task: T Node: N RemoteAddr: A`, `\n`, then the payload echoed.

use tokio::net::UdpSocket;
use tracing::debug;

use super::identity::Identity;

/// The largest UDP reply (the IPv4 UDP payload limit); a longer echo is truncated.
const MAX_DATAGRAM: usize = 65_507;

/// Answers every datagram on `socket`, forever.
pub(super) async fn serve(identity: &Identity, socket: UdpSocket) {
    let mut buf = vec![0u8; 65_536];
    loop {
        let (len, peer) = match socket.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(error) => {
                // E.g. ECONNREFUSED from an earlier reply's ICMP error: per datagram.
                debug!(%error, "udp receive failed");
                continue;
            }
        };
        let mut reply = format!(
            "Hostname: {} Task: {} Node: {} RemoteAddr: {peer}\n",
            identity.hostname, identity.task, identity.node
        )
        .into_bytes();
        let room = MAX_DATAGRAM.saturating_sub(reply.len());
        reply.extend_from_slice(&buf[..len.min(room)]);
        if let Err(error) = socket.send_to(&reply, peer).await {
            debug!(%error, %peer, "udp reply failed");
        }
    }
}
