//! Notifications as WeChat sends them: the resource encrypted with the APIv3 key (AAD
//! `transaction` / `refund`), the envelope in WeChat's key order, headers signed with the
//! platform key, and delivery retried on WeChat's schedule until a 200/204 (time divided by
//! `time_scale`). The builders are public so tests can craft (and tamper with) notifications.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::domain::time::to_wechat_rfc3339;
use crate::wechat::sign::SCHEME;
use crate::wechat::wire::notify::{EncryptedResource, Envelope};

use super::SimContext;
use super::auth::platform_signature;
use super::keys::SimKeys;
use super::state::NotificationRecord;

/// Concurrent delivery attempts the simulator makes at most.
pub const MAX_IN_FLIGHT: usize = 256;

/// WeChat's documented retry intervals after a failed delivery (15 retries, ~24 h 4 min).
pub const RETRY_SCHEDULE_SECS: [u64; 15] =
    [15, 15, 30, 180, 600, 1200, 1800, 1800, 1800, 3600, 10800, 10800, 10800, 21600, 21600];

/// A notification before encryption.
#[derive(Debug, Clone)]
pub struct PlainNotification {
    pub id: String,
    pub event_type: String,
    pub summary: String,
    pub original_type: String,
    pub associated_data: String,
    pub resource_json: String,
    pub create_time: DateTime<Utc>,
}

impl PlainNotification {
    /// A `TRANSACTION.SUCCESS` for the given decrypted transaction JSON.
    pub fn transaction_success(id: String, resource_json: String, create_time: DateTime<Utc>) -> Self {
        Self {
            id,
            event_type: "TRANSACTION.SUCCESS".into(),
            summary: "支付成功".into(),
            original_type: "transaction".into(),
            associated_data: "transaction".into(),
            resource_json,
            create_time,
        }
    }
}

/// The exact body WeChat would POST: compact JSON in WeChat's key order.
pub fn envelope_body(keys: &SimKeys, n: &PlainNotification, nonce: &str) -> String {
    let ciphertext = keys.apiv3.encrypt(nonce, &n.associated_data, n.resource_json.as_bytes()).unwrap_or_default();
    let envelope = Envelope {
        id: n.id.clone(),
        create_time: to_wechat_rfc3339(n.create_time),
        resource_type: "encrypt-resource".into(),
        event_type: n.event_type.clone(),
        summary: n.summary.clone(),
        resource: EncryptedResource {
            original_type: n.original_type.clone(),
            algorithm: "AEAD_AES_256_GCM".into(),
            ciphertext,
            associated_data: n.associated_data.clone(),
            nonce: nonce.to_owned(),
        },
    };
    serde_json::to_string(&envelope).unwrap_or_default()
}

/// The five `Wechatpay-*` headers for sending `body` at `timestamp` (signed here, on the
/// calling thread: for tests crafting notifications).
pub fn signed_headers(keys: &SimKeys, body: &str, timestamp: i64, nonce: &str) -> Headers {
    let ts = timestamp.to_string();
    let signature = platform_signature(&keys.platform, &ts, nonce, body.as_bytes());
    header_list(keys.platform_serial.clone(), ts, nonce.to_owned(), signature)
}

fn header_list(serial: String, timestamp: String, nonce: String, signature: String) -> Headers {
    vec![
        ("Wechatpay-Timestamp", timestamp),
        ("Wechatpay-Nonce", nonce),
        ("Wechatpay-Signature", signature),
        ("Wechatpay-Serial", serial),
        ("Wechatpay-Signature-Type", SCHEME.to_owned()),
    ]
}

fn alnum(sim: &SimContext, len: usize) -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    (0..len).map(|_| char::from(ALPHABET[sim.random::<u32>() as usize % ALPHABET.len()])).collect()
}

/// One notification to deliver, `copies` times (WeChat's duplicates carry the same body).
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub notification: PlainNotification,
    pub out_trade_no: String,
    pub notify_url: String,
    pub copies: usize,
}

/// Registers the notification and delivers it in the background.
pub async fn send(
    sim: SimContext,
    notification: PlainNotification,
    out_trade_no: String,
    notify_url: String,
    copies: usize,
) {
    send_all(sim, vec![Outgoing { notification, out_trade_no, notify_url, copies }], false).await;
}

/// Registers many notifications under one lock, then delivers each copy in the background, in
/// the given order or (`shuffle`) in a seeded random order.
pub async fn send_all(sim: SimContext, outgoing: Vec<Outgoing>, shuffle: bool) {
    let chaos = sim.chaos.read().await.clone();
    let mut deliveries = Vec::new();
    {
        let mut state = sim.state.lock().await;
        for item in &outgoing {
            let dropped = chaos.drop_rate > 0.0 && sim.random::<f64>() < chaos.drop_rate;
            let extra = usize::from(chaos.duplicate_rate > 0.0 && sim.random::<f64>() < chaos.duplicate_rate);
            let body: Arc<str> = envelope_body(&sim.keys, &item.notification, &alnum(&sim, 12)).into();
            let headers = Arc::new(HeaderCache::default());
            for _ in 0..item.copies.max(1) + extra {
                state.notifications.push(NotificationRecord {
                    id: item.notification.id.clone(),
                    out_trade_no: item.out_trade_no.clone(),
                    event_type: item.notification.event_type.clone(),
                    notify_url: item.notify_url.clone(),
                    attempts: Vec::new(),
                    delivered: false,
                    gave_up: false,
                    dropped,
                });
                if dropped {
                    continue;
                }
                let index = state.notifications.len() - 1;
                let delay = if chaos.max_delay_ms > 0 { sim.random::<u64>() % chaos.max_delay_ms } else { 0 };
                let delivery = Delivery {
                    index,
                    body: Arc::clone(&body),
                    url: item.notify_url.clone(),
                    headers: Arc::clone(&headers),
                    delay: Duration::from_millis(delay),
                };
                deliveries.push(delivery);
            }
        }
    }
    if shuffle || chaos.reorder {
        let mut rng = sim.rng.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        rand::seq::SliceRandom::shuffle(deliveries.as_mut_slice(), &mut *rng);
    }
    for delivery in deliveries {
        tokio::spawn(deliver(sim.clone(), delivery));
    }
}

/// One copy of a notification on its way.
struct Delivery {
    index: usize,
    body: Arc<str>,
    url: String,
    headers: Arc<HeaderCache>,
    /// Chaos: wait this long before the first attempt.
    delay: Duration,
}

/// Signed headers of one notification, reused by deliveries within the same second (copies
/// sent together carry the same headers, and RSA signing is the simulator's main cost).
#[derive(Debug, Default)]
pub struct HeaderCache(tokio::sync::Mutex<Option<SignedAt>>);

/// `Wechatpay-*` header names and values.
pub type Headers = Vec<(&'static str, String)>;

#[derive(Debug)]
pub struct SignedAt {
    second: i64,
    headers: Headers,
}

impl HeaderCache {
    async fn headers(&self, sim: &SimContext, body: &str) -> Headers {
        let now = sim.clock.now().timestamp();
        let mut cached = self.0.lock().await;
        if let Some(signed) = cached.as_ref()
            && signed.second == now
        {
            return signed.headers.clone();
        }
        let (ts, nonce) = (now.to_string(), alnum(sim, 32));
        let message = crate::wechat::sign::response_message(&ts, &nonce, body.as_bytes());
        // A notification answers no request: the account's default key signs it (after a
        // rotation takes effect, the new certificate).
        let (serial, signer) = sim.signing_key(None);
        let signature = signer.sign_blocking(message).await.unwrap_or_default();
        let headers = header_list(serial, ts, nonce, signature);
        *cached = Some(SignedAt { second: now, headers: headers.clone() });
        headers
    }
}

async fn deliver(sim: SimContext, delivery: Delivery) {
    let Delivery { index, body, url: notify_url, headers, delay } = delivery;
    for attempt in 0..=RETRY_SCHEDULE_SECS.len() {
        if attempt > 0 || !delay.is_zero() {
            let delay = match attempt {
                0 => delay,
                _ => Duration::from_secs(RETRY_SCHEDULE_SECS[attempt - 1]).div_f64(sim.time_scale),
            };
            tokio::select! {
                () = sim.stop.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
        let status = post_once(&sim, &notify_url, &body, &headers).await;
        let mut state = sim.state.lock().await;
        let Some(record) = state.notifications.get_mut(index) else {
            return;
        };
        record.attempts.push(status);
        if status == 200 || status == 204 {
            record.delivered = true;
            return;
        }
    }
    let mut state = sim.state.lock().await;
    if let Some(record) = state.notifications.get_mut(index) {
        record.gave_up = true;
    }
}

/// One delivery attempt with signed headers; returns the HTTP status (0: no answer).
/// At most `MAX_IN_FLIGHT` attempts run at once, like a sender with a connection pool.
pub async fn post_once(sim: &SimContext, notify_url: &str, body: &str, headers: &HeaderCache) -> u16 {
    let Ok(_slot) = sim.delivery_slots.acquire().await else { return 0 };
    let mut request = sim
        .http
        .post(notify_url)
        .header("Content-Type", "application/json")
        .header("Accept", "*/*")
        .header("User-Agent", "Mozilla/4.0")
        .body(body.to_owned());
    let probe = sim.signature_probe().await;
    for (name, value) in headers.headers(sim, body).await {
        // A probe replaces the signature of this one delivery; WeChat delivers again later.
        let value = match (name, &probe) {
            ("Wechatpay-Signature", Some(probe)) => probe.clone(),
            _ => value,
        };
        request = request.header(name, value);
    }
    match request.send().await {
        Ok(response) => response.status().as_u16(),
        Err(_) => 0,
    }
}
