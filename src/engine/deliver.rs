//! Delivering: one request with messages already journaled `sent` to one destination.
//!
//! Owns the encoding of a transfer body and what each way the request can end
//! ([`Delivery`]) means for its messages, as a [`Step`]: an answer is applied by `answer`, a
//! whole-request refusal or failure sends them back to `read`, an ambiguous end leaves them
//! pinned (`sent`) to the destination for `settle`, and a transfer another instance parked
//! goes on to `commit`. Uses `run`, `item`, `ledger`, `answer`, `commit` and `client`; called
//! by `route`.

use bytes::Bytes;

use super::answer::{Sorted, Step, answered, handshake_refused, not_taken, refused_request};
use super::client::Delivery;
use super::item::Item;
use super::ledger;
use super::run::Run;
use crate::wire;

/// Encodes items as one transfer body.
pub(crate) fn encode(items: &[Item]) -> Bytes {
    let len: usize = items
        .iter()
        .map(|i| wire::FRAME_HEADER_LEN + i.msg.bytes.len())
        .sum();
    let mut buf = Vec::with_capacity(len);
    for i in items {
        wire::put_frame_header(&mut buf, &i.msg.hash, i.size());
        buf.extend_from_slice(&i.msg.bytes);
    }
    Bytes::from(buf)
}

/// One request to `d` with items already journaled `sent` to it (addressed to the instance
/// they carry, the same for all: they were journaled together).
pub(crate) async fn one_request(run: &Run, d: usize, items: Vec<Item>) -> anyhow::Result<Step> {
    let dest = run.set.dests[d].clone();
    let dname = dest.to_string();
    let body = encode(&items);
    let target = items.first().and_then(|i| i.instance.clone());
    let delivery = run
        .client
        .transfer(&dest, target.as_deref(), body, items.len())
        .await;
    let mut sorted = Sorted::default();
    match delivery {
        Delivery::Misdirected(reason) => {
            tracing::debug!(dest = %dname, "{dname}: another instance than {} answered: {reason}; sending again", target.as_deref().unwrap_or("?"));
            let reason = reason.to_string();
            ledger::not_delivered(run, &dname, ledger::ids(&items), &reason).await?;
            sorted.misdirected = true;
            sorted.retry = items;
        }
        Delivery::NotDelivered(reason) => sorted = not_taken(run, d, items, &reason).await?,
        Delivery::Refused {
            status,
            permanent,
            reason,
        } => sorted = refused_request(run, d, items, status, permanent, &reason).await?,
        Delivery::HandshakeRefused(r) => sorted = handshake_refused(run, d, items, &r).await?,
        Delivery::Ambiguous(reason) => {
            tracing::warn!(
                dest = %dname,
                "request to {dname} ended ambiguously ({reason}); its {} messages stay with {dname} until it confirms",
                items.len()
            );
            run.state.note_failure(&dname, &reason);
            return Ok(Step::in_doubt(items));
        }
        Delivery::Answered { results, instance } => {
            return Ok(Step::Done(
                answered(run, d, items, results, instance).await?,
            ));
        }
        Delivery::Parked { instance, results } => {
            return super::commit::parked(run, d, items, instance, results).await;
        }
    }
    Ok(Step::Done(sorted))
}
