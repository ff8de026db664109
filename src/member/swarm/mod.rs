//! How a member finds peers: it announces to each conductor ([`announcer`]), learns addresses
//! from the conductors, from peer exchange and from peers that connect to it ([`book`]), and
//! dials the ones it is not connected to ([`dialer`]). Peers already known keep working while
//! the conductors are down.

pub mod announcer;
pub mod book;
pub mod dialer;

use std::sync::Arc;

use super::shared::{OnPanic, Shared};

pub use announcer::leave;
pub use book::Book;

/// Starts an announce loop per conductor, and the connector.
pub fn start(shared: &Arc<Shared>) -> std::io::Result<()> {
    for conductor in shared.conductors.clone() {
        let for_announcer = Arc::clone(shared);
        shared.spawn("announcer", OnPanic::Fail, move || {
            announcer::announce_loop(&for_announcer, &conductor)
        })?;
    }
    let for_connector = Arc::clone(shared);
    shared.spawn("connector", OnPanic::Fail, move || {
        dialer::connect_loop(&for_connector)
    })
}
