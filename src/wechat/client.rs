//! The WeChat Pay v3 HTTP client: signs each request, sends it with a timeout, verifies the
//! signature of each 2xx response over its raw bytes, and classifies failures. It decides
//! nothing about retries (callers and jobs own that policy) and touches no database.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, USER_AGENT};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;

use crate::clock::Clock;
use crate::telemetry::metrics::Metrics;

use super::certificate::{self, PlatformCertificate};
use super::convert;
use super::error::WechatError;
use super::keys::Credentials;
use super::ratelimit::{Priority, RateLimiter};
use super::sign;
use super::verify::{SignedHeaders, VerifyError};
use super::wire::bill::BillInfo;
use super::wire::certificates::CertificatesResponse;
use super::wire::error::ErrorBody;
use super::wire::pay::{CloseRequest, JsapiPrepayRequest, Payer, PrepayAmount, PrepayResponse, Transaction};
use super::wire::refund::{Refund as WireRefund, RefundRequest, RefundRequestAmount};
use crate::domain::time::{from_ms, to_wechat_rfc3339};
use crate::domain::wechat_text::{self, REFUND_REASON_MAX_BYTES};
use crate::domain::{Fen, Order, OutRefundNo, OutTradeNo, PaymentReport, Refund, RefundReport, TransactionId};

/// Every `endpoint` label this client measures.
const ENDPOINTS: [&str; 8] = [
    "jsapi_prepay",
    "query_order",
    "close_order",
    "refund",
    "query_refund",
    "trade_bill",
    "bill_download",
    "certificates",
];

/// An unknown certificate serial makes us download WeChat's list at most this often (per
/// process), whoever asks.
pub const ON_DEMAND_REFRESH_INTERVAL: Duration = Duration::from_secs(60);

/// How a downloaded certificate list is trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertificateTrust {
    /// The answer must be signed by a key we already hold (every refresh: pinned), or by a
    /// certificate of the list when the list also names one we hold (continuity).
    Known,
    /// First download, nothing known yet: the answer may be signed by a certificate it lists
    /// (trust on first use, as wechatpay-go's downloader and Python wechatpayv3 bootstrap). The
    /// certificates themselves are still sealed with the APIv3 key.
    FirstUse,
}

/// Creates the call series of `endpoint` at 0 for every outcome, so the first failure is an
/// increase Prometheus can see (and an error ratio reads 0, not "no data").
pub(crate) fn touch_call_series(metrics: &Metrics, endpoint: &str) {
    for outcome in std::iter::once("ok").chain(WechatError::OUTCOMES.iter().copied()) {
        let _ = metrics.wechat_calls.with_label_values(&[endpoint, outcome]);
    }
    let _ = metrics.wechat_call_duration.with_label_values(&[endpoint]);
}

const AGENT: &str = concat!("wxpay-recon/", env!("CARGO_PKG_VERSION"));

/// Longest a bill download may take, body included.
const BILL_DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Tolerance on the `Wechatpay-Timestamp` of responses, as the official Go SDK uses.
const RESPONSE_TOLERANCE_SECS: i64 = 300;

/// A signed, verified connection to WeChat Pay (or the simulator).
#[derive(Debug, Clone)]
pub struct PayClient {
    http: reqwest::Client,
    base_url: String,
    creds: Arc<Credentials>,
    clock: Clock,
    metrics: Metrics,
    limiter: Option<RateLimiter>,
}

/// What a refund application sends besides the refund itself.
#[derive(Debug, Clone)]
pub struct RefundApplication<'a> {
    pub refund: &'a Refund,
    /// The order's total (WeChat checks it against the payment).
    pub order_total: Fen,
    pub transaction_id: Option<&'a TransactionId>,
    pub notify_url: &'a str,
}

fn refund_report(endpoint: &'static str, body: &[u8]) -> Result<RefundReport, WechatError> {
    let refund: WireRefund = decode(endpoint, body)?;
    convert::refund_report(&refund).map_err(|e| WechatError::Unrecognised { endpoint, message: e.to_string() })
}

/// A 2xx answer: status, headers and raw body (verified, unless it came from [`PayClient::exchange`]).
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: bytes::Bytes,
}

impl PayClient {
    pub fn new(
        base_url: &str,
        timeout: Duration,
        creds: Arc<Credentials>,
        clock: Clock,
        metrics: Metrics,
    ) -> Result<Self, WechatError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(3)))
            .pool_max_idle_per_host(32)
            .build()
            .map_err(|e| WechatError::Network { endpoint: "client", message: e.without_url().to_string() })?;
        for endpoint in ENDPOINTS {
            touch_call_series(&metrics, endpoint);
        }
        Ok(Self { http, base_url: base_url.trim_end_matches('/').to_owned(), creds, clock, metrics, limiter: None })
    }

    /// Every call waits for `limiter` first (one budget for the process, or the deployment).
    #[must_use]
    pub fn with_rate_limiter(mut self, limiter: Option<RateLimiter>) -> Self {
        self.limiter = limiter;
        self
    }

    pub fn credentials(&self) -> &Credentials {
        &self.creds
    }

    /// `POST /v3/pay/transactions/jsapi`: a prepay_id for `wx.requestPayment`. The same order
    /// always sends the same parameters, so WeChat treats a repeat as the same order.
    pub async fn prepay(&self, order: &Order, notify_url: &str) -> Result<String, WechatError> {
        let request = JsapiPrepayRequest {
            appid: self.creds.appid.clone(),
            mchid: self.creds.mchid.clone(),
            // Already cut when the order was created; cut again so an order recorded before that
            // rule can still be paid (`fit` leaves a fitting text as it is, so repeats match).
            description: wechat_text::fit(&order.description, wechat_text::DESCRIPTION_MAX_BYTES),
            out_trade_no: order.out_trade_no.to_string(),
            time_expire: Some(to_wechat_rfc3339(from_ms(order.time_expire_ms))),
            attach: None,
            notify_url: notify_url.to_owned(),
            amount: PrepayAmount { total: order.amount.0, currency: Some("CNY".into()) },
            payer: Payer { openid: order.payer_openid.clone() },
        };
        let body = serde_json::to_string(&request).map_err(|e| WechatError::Sign(e.to_string()))?;
        let answer =
            self.send("jsapi_prepay", Priority::User, Method::POST, "/v3/pay/transactions/jsapi", Some(body)).await?;
        let prepay: PrepayResponse = decode("jsapi_prepay", &answer.body)?;
        Ok(prepay.prepay_id)
    }

    /// `GET /v3/pay/transactions/out-trade-no/{no}?mchid=`: WeChat's view of one order.
    /// `priority`: who asks (the owner's status request, or the poller settling the order).
    pub async fn query_order(
        &self,
        out_trade_no: &OutTradeNo,
        priority: Priority,
    ) -> Result<PaymentReport, WechatError> {
        let path = format!("/v3/pay/transactions/out-trade-no/{out_trade_no}?mchid={}", self.creds.mchid);
        let answer = self.send("query_order", priority, Method::GET, &path, None).await?;
        let txn: Transaction = decode("query_order", &answer.body)?;
        convert::payment_report(&txn)
            .map_err(|e| WechatError::Unrecognised { endpoint: "query_order", message: e.to_string() })
    }

    /// `POST /v3/pay/transactions/out-trade-no/{no}/close`: 204 on success. `priority`: the
    /// owner's cancel, or the close of an expired order.
    pub async fn close_order(&self, out_trade_no: &OutTradeNo, priority: Priority) -> Result<(), WechatError> {
        let path = format!("/v3/pay/transactions/out-trade-no/{out_trade_no}/close");
        let body = serde_json::to_string(&CloseRequest { mchid: self.creds.mchid.clone() })
            .map_err(|e| WechatError::Sign(e.to_string()))?;
        let answer = self.send("close_order", priority, Method::POST, &path, Some(body)).await?;
        if answer.status == StatusCode::NO_CONTENT || answer.status == StatusCode::OK {
            Ok(())
        } else {
            Err(WechatError::Decode { endpoint: "close_order", message: format!("status {}", answer.status) })
        }
    }

    /// `POST /v3/refund/domestic/refunds`: apply for a refund (idempotent by out_refund_no).
    pub async fn refund(&self, application: &RefundApplication<'_>) -> Result<RefundReport, WechatError> {
        let refund = application.refund;
        let request = RefundRequest {
            transaction_id: application.transaction_id.map(ToString::to_string),
            out_trade_no: refund.out_trade_no.to_string(),
            out_refund_no: refund.out_refund_no.to_string(),
            // WeChat takes 80 UTF-8 bytes of 1-3-byte characters. Our API refuses longer reasons;
            // a refund recorded before that rule (or by another path) is cut here rather than
            // refused by WeChat and closed.
            // A reason left empty by the cut (only 4-byte characters) is not sent at all.
            reason: refund
                .reason
                .as_deref()
                .map(|r| wechat_text::fit(r, REFUND_REASON_MAX_BYTES))
                .filter(|r| !r.is_empty()),
            notify_url: Some(application.notify_url.to_owned()),
            amount: RefundRequestAmount {
                refund: refund.amount.0,
                total: application.order_total.0,
                currency: "CNY".into(),
            },
        };
        let body = serde_json::to_string(&request).map_err(|e| WechatError::Sign(e.to_string()))?;
        let answer =
            self.send("refund", Priority::Settling, Method::POST, "/v3/refund/domestic/refunds", Some(body)).await?;
        refund_report("refund", &answer.body)
    }

    /// `GET /v3/refund/domestic/refunds/{out_refund_no}`: WeChat's view of one refund.
    pub async fn query_refund(&self, out_refund_no: &OutRefundNo) -> Result<RefundReport, WechatError> {
        let path = format!("/v3/refund/domestic/refunds/{out_refund_no}");
        let answer = self.send("query_refund", Priority::Settling, Method::GET, &path, None).await?;
        refund_report("query_refund", &answer.body)
    }

    /// `GET /v3/bill/tradebill`: where the ALL bill of `bill_date` (`YYYY-MM-DD`, a Shanghai
    /// day) can be downloaded, gzipped, and its SHA-1.
    pub async fn trade_bill(&self, bill_date: &str) -> Result<BillInfo, WechatError> {
        let path = format!("/v3/bill/tradebill?bill_date={bill_date}&bill_type=ALL&tar_type=GZIP");
        let answer = self.send("trade_bill", Priority::Settling, Method::GET, &path, None).await?;
        decode("trade_bill", &answer.body)
    }

    /// Streams the file at `download_url` into `out`, refusing more than `max_bytes`. The URL
    /// comes from a response, and the request carries our signature, so it must be on the
    /// configured base origin or on one of WeChat Pay's own hosts ([`check_download_origin`]).
    /// The body is not signed; the caller checks the hash. A URL is short-lived (30 s to 5 min):
    /// a caller that retries applies for a fresh one (`trade_bill`) rather than reusing it.
    pub async fn download_bill(
        &self,
        download_url: &str,
        out: &mut (impl tokio::io::AsyncWrite + Unpin),
        max_bytes: u64,
    ) -> Result<u64, WechatError> {
        self.measured("bill_download", Priority::Settling, self.download_inner(download_url, out, max_bytes)).await
    }

    /// Every call: waits for its priority's share of the call budget (refused as `Busy`, and
    /// not counted as a call, when it cannot be admitted in time), then counts and times the
    /// outcome by endpoint.
    async fn measured<T>(
        &self,
        endpoint: &'static str,
        priority: Priority,
        call: impl std::future::Future<Output = Result<T, WechatError>>,
    ) -> Result<T, WechatError> {
        if let Some(limiter) = &self.limiter {
            limiter.admit(priority).await.map_err(|source| WechatError::Busy { endpoint, source })?;
        }
        let started = Instant::now();
        let result = call.await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(err) => err.outcome(),
        };
        self.metrics.wechat_calls.with_label_values(&[endpoint, outcome]).inc();
        self.metrics.wechat_call_duration.with_label_values(&[endpoint]).observe(started.elapsed().as_secs_f64());
        result
    }

    async fn download_inner(
        &self,
        download_url: &str,
        out: &mut (impl tokio::io::AsyncWrite + Unpin),
        max_bytes: u64,
    ) -> Result<u64, WechatError> {
        use tokio::io::AsyncWriteExt;
        const ENDPOINT: &str = "bill_download";
        let url = reqwest::Url::parse(download_url)
            .map_err(|e| WechatError::Decode { endpoint: ENDPOINT, message: format!("bad download_url: {e}") })?;
        let base = reqwest::Url::parse(&self.base_url)
            .map_err(|e| WechatError::Decode { endpoint: ENDPOINT, message: format!("bad base url: {e}") })?;
        check_download_origin(&url, &base).map_err(|message| WechatError::Decode { endpoint: ENDPOINT, message })?;
        let canonical = match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_owned(),
        };
        let authorization = self
            .creds
            .merchant
            .authorization("GET", &canonical, "", self.clock.now().timestamp(), &sign::nonce(32))
            .map_err(|e| WechatError::Sign(e.to_string()))?;
        let mut response = self
            .http
            .get(url)
            // The client's timeout bounds ordinary calls; a bill of hundreds of MiB needs longer.
            .timeout(BILL_DOWNLOAD_TIMEOUT)
            .header(AUTHORIZATION, authorization)
            .header(ACCEPT, "*/*")
            .header(USER_AGENT, AGENT)
            .send()
            .await
            .map_err(|e| transport_error(ENDPOINT, &e))?;
        let status = response.status();
        if !status.is_success() {
            let bytes = response.bytes().await.map_err(|e| transport_error(ENDPOINT, &e))?;
            return Err(api_error(ENDPOINT, status, &bytes));
        }
        let mut written: u64 = 0;
        while let Some(chunk) = response.chunk().await.map_err(|e| transport_error(ENDPOINT, &e))? {
            written += chunk.len() as u64;
            if written > max_bytes {
                return Err(WechatError::Decode {
                    endpoint: ENDPOINT,
                    message: format!("bill larger than the {max_bytes}-byte limit"),
                });
            }
            out.write_all(&chunk)
                .await
                .map_err(|e| WechatError::Network { endpoint: ENDPOINT, message: format!("writing the bill: {e}") })?;
        }
        out.flush()
            .await
            .map_err(|e| WechatError::Network { endpoint: ENDPOINT, message: format!("writing the bill: {e}") })?;
        Ok(written)
    }

    /// Signs and sends one call, measured, and checks the answer's signature.
    async fn send(
        &self,
        endpoint: &'static str,
        priority: Priority,
        method: Method,
        path_and_query: &str,
        body: Option<String>,
    ) -> Result<Answer, WechatError> {
        self.measured(endpoint, priority, async {
            let answer = self.exchange(endpoint, method, path_and_query, body).await?;
            self.verify_answer(endpoint, &answer).await?;
            Ok(answer)
        })
        .await
    }

    /// Checks the answer's signature. A certificate serial we do not know may be WeChat's new
    /// certificate: refresh the list (at most once a minute) and check again, so the first
    /// answers signed after a rotation are not lost.
    async fn verify_answer(&self, endpoint: &'static str, answer: &Answer) -> Result<(), WechatError> {
        let signed = signed_headers(&answer.headers);
        let keys = &self.creds.platform_keys;
        let verify = || keys.verify(&signed, &answer.body, self.clock.now().timestamp(), RESPONSE_TOLERANCE_SECS);
        match verify() {
            Err(VerifyError::UnknownSerial(serial)) if self.refresh_on_demand(&serial).await => verify(),
            other => other,
        }
        .map_err(|source| WechatError::Signature { endpoint, source })
    }

    /// Downloads WeChat's certificate list when `serial` is unknown (see
    /// [`KeyRing::refresh_on_demand`](super::keyring::KeyRing::refresh_on_demand)); true if
    /// the serial is known afterwards.
    pub async fn refresh_on_demand(&self, serial: &str) -> bool {
        self.creds
            .platform_keys
            .refresh_on_demand(serial, ON_DEMAND_REFRESH_INTERVAL, self.clock.now(), || {
                self.fetch_certificates(CertificateTrust::Known)
            })
            .await
    }

    /// Downloads the certificate list and installs it in the live key set; returns the list.
    pub async fn refresh_certificates(&self) -> Result<Vec<PlatformCertificate>, WechatError> {
        let certificates = self.fetch_certificates(CertificateTrust::Known).await?;
        self.creds.platform_keys.install_fetched(certificates.clone(), self.clock.now());
        Ok(certificates)
    }

    /// `GET /v3/certificates`: WeChat's platform certificates, opened with the APIv3 key and
    /// checked (serial and key read from each certificate). Installs nothing.
    pub async fn fetch_certificates(&self, trust: CertificateTrust) -> Result<Vec<PlatformCertificate>, WechatError> {
        const ENDPOINT: &str = "certificates";
        // Certificates keep us able to verify WeChat at all: settling priority.
        self.measured(ENDPOINT, Priority::Settling, async {
            let answer = self.exchange(ENDPOINT, Method::GET, "/v3/certificates", None).await?;
            let list: CertificatesResponse = decode(ENDPOINT, &answer.body)?;
            let certificates = list
                .data
                .iter()
                .map(|entry| certificate::open_entry(&self.creds.apiv3_key, entry))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| WechatError::Decode { endpoint: ENDPOINT, message: e.to_string() })?;
            if certificates.is_empty() {
                return Err(WechatError::Decode { endpoint: ENDPOINT, message: "no certificate listed".into() });
            }
            let held = self.creds.platform_keys.snapshot();
            let mut listed = (*held).clone();
            certificates.iter().for_each(|cert| listed.insert_certificate(cert));
            let signed = signed_headers(&answer.headers);
            let now = self.clock.now().timestamp();
            let verified = match trust {
                CertificateTrust::FirstUse => listed.verify(&signed, &answer.body, now, RESPONSE_TOLERANCE_SECS),
                CertificateTrust::Known => match held.verify(&signed, &answer.body, now, RESPONSE_TOLERANCE_SECS) {
                    // WeChat signs with its new certificate before we hold it (a rotation we
                    // did not see in time). The list is still accepted when it is sealed with
                    // the APIv3 key (checked above), signed by a certificate it lists, and lists
                    // one we already hold: continuity with what we trust, not a fresh start.
                    Err(VerifyError::UnknownSerial(serial))
                        if certificates.iter().any(|c| c.serial.eq_ignore_ascii_case(&serial))
                            && certificates.iter().any(|c| held.contains(&c.serial)) =>
                    {
                        tracing::warn!(serial, "certificate list signed by a certificate it introduces; accepted (it also lists one we hold)");
                        listed.verify(&signed, &answer.body, now, RESPONSE_TOLERANCE_SECS)
                    }
                    other => other,
                },
            };
            verified.map_err(|source| WechatError::Signature { endpoint: ENDPOINT, source })?;
            Ok(certificates)
        })
        .await
    }

    /// Signs and sends one call; a non-2xx answer is an error. Does not check the answer's
    /// signature (callers do, with the keys they trust).
    async fn exchange(
        &self,
        endpoint: &'static str,
        method: Method,
        path_and_query: &str,
        body: Option<String>,
    ) -> Result<Answer, WechatError> {
        let url = reqwest::Url::parse(&format!("{}{path_and_query}", self.base_url))
            .map_err(|e| WechatError::Decode { endpoint, message: format!("bad url: {e}") })?;
        let canonical = match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_owned(),
        };
        let timestamp = self.clock.now().timestamp();
        let nonce = sign::nonce(32);
        let body_text = body.as_deref().unwrap_or("");
        let authorization = self
            .creds
            .merchant
            .authorization(method.as_str(), &canonical, body_text, timestamp, &nonce)
            .map_err(|e| WechatError::Sign(e.to_string()))?;
        let mut request = self
            .http
            .request(method, url)
            .header(AUTHORIZATION, authorization)
            .header(ACCEPT, "application/json")
            .header(USER_AGENT, AGENT);
        // The key we want WeChat to sign its answer with (protocol §1.4): during a migration or a
        // certificate rotation, one we hold.
        if let Some(serial) = self.creds.platform_keys.preferred_serial(self.clock.now()) {
            request = request.header("Wechatpay-Serial", serial);
        }
        if let Some(body) = body {
            request = request.header(CONTENT_TYPE, "application/json").body(body);
        }
        let response = request.send().await.map_err(|e| transport_error(endpoint, &e))?;
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.map_err(|e| transport_error(endpoint, &e))?;
        if !status.is_success() {
            return Err(api_error(endpoint, status, &bytes));
        }
        Ok(Answer { status, headers, body: bytes })
    }
}

/// WeChat Pay's API hosts, which may serve a bill download whatever base URL is configured:
/// WeChat hands out `download_url`s on its backup host (api2) when the primary one is degraded.
/// The `wechatpay.cn` pair is what the official Java SDK also knows: its `Constant` lists
/// `api.mch.weixin.qq.com` and `api.wechatpay.cn` as primary domains and `api2.wechatpay.cn` as
/// the secondary one its `OkHttpMultiDomainInterceptor` fails over to (protocol §0).
pub const WECHAT_PAY_HOSTS: [&str; 4] =
    ["api.mch.weixin.qq.com", "api2.mch.weixin.qq.com", "api.wechatpay.cn", "api2.wechatpay.cn"];

/// Whether our signed GET may go to `url`: the configured base origin (scheme, host and port
/// alike: the simulator, or a test double), or one of [`WECHAT_PAY_HOSTS`] over https on the
/// default port. Anything else is refused with a message naming what was accepted, because the
/// Authorization header must never reach a host a response merely named.
pub fn check_download_origin(url: &reqwest::Url, base: &reqwest::Url) -> Result<(), String> {
    if url.origin() == base.origin() {
        return Ok(());
    }
    let host = url.host_str().unwrap_or("");
    let official = WECHAT_PAY_HOSTS.iter().any(|h| host.eq_ignore_ascii_case(h));
    if official && url.scheme() == "https" && url.port().is_none() {
        return Ok(());
    }
    let why = if official { "WeChat Pay's hosts are reached over https on port 443 only" } else { "unknown host" };
    Err(format!(
        "download_url on {} refused ({why}): our signature goes only to {} or https://{{{}}}",
        url.origin().ascii_serialization(),
        base.origin().ascii_serialization(),
        WECHAT_PAY_HOSTS.join(","),
    ))
}

/// Reads the `Wechatpay-*` headers of a response or notification.
pub fn signed_headers(headers: &HeaderMap) -> SignedHeaders<'_> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    SignedHeaders {
        timestamp: get("wechatpay-timestamp"),
        nonce: get("wechatpay-nonce"),
        signature: get("wechatpay-signature"),
        serial: get("wechatpay-serial"),
        signature_type: get("wechatpay-signature-type"),
    }
}

/// reqwest errors print the URL, which may carry secrets in its query: always strip it.
pub(crate) fn transport_error(endpoint: &'static str, err: &reqwest::Error) -> WechatError {
    if err.is_timeout() {
        WechatError::Timeout { endpoint }
    } else {
        let mut message = err.to_string();
        if let Some(url) = err.url() {
            message = message.replace(url.as_str(), "<url>");
        }
        WechatError::Network { endpoint, message }
    }
}

fn api_error(endpoint: &'static str, status: StatusCode, body: &[u8]) -> WechatError {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(error) => WechatError::Api { endpoint, status: status.as_u16(), code: error.code, message: error.message },
        Err(_) => WechatError::Api {
            endpoint,
            status: status.as_u16(),
            code: format!("HTTP_{}", status.as_u16()),
            message: String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
        },
    }
}

fn decode<T: DeserializeOwned>(endpoint: &'static str, body: &[u8]) -> Result<T, WechatError> {
    serde_json::from_slice(body).map_err(|e| WechatError::Decode { endpoint, message: e.to_string() })
}

#[cfg(test)]
mod download_origin_tests {
    use super::check_download_origin;

    fn url(s: &str) -> reqwest::Url {
        reqwest::Url::parse(s).expect("url")
    }

    #[test]
    fn the_configured_origin_and_wechat_s_hosts_are_accepted() {
        let sim = url("http://127.0.0.1:7070");
        assert!(check_download_origin(&url("http://127.0.0.1:7070/v3/billdownload/file?token=a"), &sim).is_ok());
        for host in ["api.mch.weixin.qq.com", "api2.mch.weixin.qq.com", "api.wechatpay.cn", "api2.wechatpay.cn"] {
            let on = url(&format!("https://{host}/v3/billdownload/file?token=a&tartype=gzip"));
            assert!(check_download_origin(&on, &sim).is_ok(), "{host}");
            let production = url("https://api.mch.weixin.qq.com");
            assert!(check_download_origin(&on, &production).is_ok(), "{host} from production");
        }
        let upper = url("https://API2.MCH.WEIXIN.QQ.COM/v3/billdownload/file?token=a");
        assert!(check_download_origin(&upper, &sim).is_ok(), "host names are case-insensitive");
    }

    #[test]
    fn anything_else_is_refused_with_a_clear_reason() {
        let production = url("https://api.mch.weixin.qq.com");
        let http = check_download_origin(&url("http://api2.mch.weixin.qq.com/v3/billdownload/file"), &production)
            .expect_err("plain http to WeChat");
        assert!(http.contains("https on port 443 only"), "{http}");
        let port = check_download_origin(&url("https://api2.mch.weixin.qq.com:8443/x"), &production)
            .expect_err("another port");
        assert!(port.contains("refused"), "{port}");
        for other in [
            "https://evil.example/v3/billdownload/file?token=a",
            "https://api.mch.weixin.qq.com.evil.example/v3/billdownload/file",
            "https://mch.weixin.qq.com/v3/billdownload/file",
            "http://127.0.0.1:7071/v3/billdownload/file",
        ] {
            let err = check_download_origin(&url(other), &url("http://127.0.0.1:7070")).expect_err(other);
            assert!(err.contains("unknown host") && err.contains("http://127.0.0.1:7070"), "{err}");
        }
    }
}
