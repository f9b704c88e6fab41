//! Trade bills as WeChat serves them (protocol §5.7, §5.9, §9.1): `GET /v3/bill/tradebill`
//! answers a signed JSON pointing at a short-lived download token, and
//! `GET /v3/billdownload/file` streams the file, unsigned, verified by its SHA-1 instead.
//!
//! The file is built when the token is issued (from the orders paid that day and the bill
//! chaos in force then), so a download repeats exactly what the hash describes.

mod day;
mod file;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use serde::Deserialize;
use serde_json::json;

use super::SimContext;
use super::auth::wechat_error;
use super::chaos::BillCorruption;
use day::DayRefusal;

/// How long a download URL works (current WeChat docs; older ones said 30 s); chaos
/// `bill.token_ttl_secs` shortens it.
const TOKEN_TTL: TimeDelta = TimeDelta::minutes(5);

/// A bill file waiting behind a download token.
#[derive(Debug, Clone)]
pub struct IssuedBill {
    /// The uncompressed file, as hashed.
    pub bill: Bytes,
    /// Serve only the first half (chaos `truncate`).
    pub truncate: bool,
    pub issued_at: DateTime<Utc>,
    /// The token stops working at this instant (simulator clock).
    pub expires_at: DateTime<Utc>,
    /// The bill's day (chaos `fail_first_download` fails the first download of each day).
    pub day: NaiveDate,
}

/// The download token a response carries, for the call log (`GET /sim/calls`).
#[derive(Debug, Clone)]
pub struct BillToken(pub String);

/// Query of `GET /v3/bill/tradebill`; all optional so a missing one gets WeChat's error, not
/// axum's.
#[derive(Debug, Deserialize)]
pub struct TradeBillQuery {
    bill_date: Option<String>,
    bill_type: Option<String>,
    tar_type: Option<String>,
}

/// `GET /v3/bill/tradebill?bill_date=YYYY-MM-DD[&bill_type=ALL][&tar_type=GZIP]`.
pub async fn trade_bill(
    State(sim): State<SimContext>,
    headers: HeaderMap,
    uri: Uri,
    Query(q): Query<TradeBillQuery>,
) -> Response {
    let param_error = |message: &str| wechat_error(StatusCode::BAD_REQUEST, "PARAM_ERROR", message);
    if q.bill_type.as_deref().is_some_and(|t| t != "ALL") {
        return param_error("bill_type无效: 模拟器只生成ALL账单");
    }
    let gzip = match q.tar_type.as_deref() {
        None => false,
        Some("GZIP") => true,
        Some(_) => return param_error("tar_type无效: 仅支持GZIP"),
    };
    let Some(raw_date) = q.bill_date else {
        return param_error("bill_date为必填参数");
    };
    let day = match day::check_bill_date(&raw_date, sim.clock.now()) {
        Ok(day) => day,
        Err(refusal) => return refusal_response(refusal),
    };
    let chaos = sim.chaos.read().await.bill.clone();
    let rows = {
        let state = sim.state.lock().await;
        let mut rows = day::rows_for_day(state.orders.values(), day);
        rows.extend(day::refund_rows_for_day(state.refunds.values(), &state.orders, day));
        rows.sort_by(|a, b| a.trade_time.cmp(&b.trade_time));
        rows
    };
    // Decided on the real rows: omitting every row through chaos still serves an (empty) bill.
    if rows.is_empty() {
        if chaos.empty_day_creating {
            return refusal_response(DayRefusal::Creating);
        }
        return wechat_error(StatusCode::BAD_REQUEST, "NO_STATEMENT_EXIST", "请求的账单文件不存在");
    }
    let rows = file::apply_row_chaos(rows, &chaos);
    let Ok(bill) = file::render(&rows, &chaos) else {
        return wechat_error(StatusCode::INTERNAL_SERVER_ERROR, "SYSTEM_ERROR", "系统错误");
    };
    let hash_value = file::advertised_hash(&bill, chaos.corrupt);
    let token = hex::encode(sim.random::<[u8; 16]>());
    let now = sim.clock.now();
    let ttl = chaos.token_ttl_secs.map_or(TOKEN_TTL, |s| TimeDelta::seconds(i64::try_from(s).unwrap_or(300)));
    let issued = IssuedBill {
        bill: Bytes::from(bill),
        truncate: chaos.corrupt == Some(BillCorruption::Truncate),
        issued_at: now,
        expires_at: now + ttl,
        day,
    };
    {
        let mut state = sim.state.lock().await;
        state.bill_downloads.retain(|_, b| now < b.expires_at);
        state.bill_downloads.insert(token.clone(), issued);
    }
    let mut download_url = format!("{}/v3/billdownload/file?token={token}", base_url(&headers, &uri));
    if gzip {
        download_url.push_str("&tartype=gzip");
    }
    let mut response =
        Json(json!({"hash_type": "SHA1", "hash_value": hash_value, "download_url": download_url})).into_response();
    response.extensions_mut().insert(BillToken(token));
    response
}

fn refusal_response(refusal: DayRefusal) -> Response {
    let (code, message) = match refusal {
        DayRefusal::Malformed => ("PARAM_ERROR", "bill_date格式有误, 应为yyyy-MM-dd"),
        // Reported wording for today's date.
        DayRefusal::NotPast => ("PARAM_ERROR", "日期格式有误"),
        DayRefusal::TooOld => ("PARAM_ERROR", "仅支持下载三个月以内的账单"),
        DayRefusal::Creating => ("STATEMENT_CREATING", "账单生成中"),
    };
    wechat_error(StatusCode::BAD_REQUEST, code, message)
}

/// Where the caller reached us, so the download URL works from wherever the test runs.
fn base_url(headers: &HeaderMap, uri: &Uri) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| uri.authority().map(ToString::to_string))
        .unwrap_or_else(|| "localhost".to_owned());
    format!("http://{host}")
}

/// Query of `GET /v3/billdownload/file`.
#[derive(Debug, Deserialize)]
pub struct DownloadQuery {
    token: Option<String>,
    tartype: Option<String>,
}

/// `GET /v3/billdownload/file?token=…[&tartype=gzip]`: the raw file, no signature headers.
pub async fn download(State(sim): State<SimContext>, Query(q): Query<DownloadQuery>) -> Response {
    let gzip = match q.tartype.as_deref() {
        None => false,
        Some(t) if t.eq_ignore_ascii_case("gzip") => true,
        Some(_) => return wechat_error(StatusCode::BAD_REQUEST, "PARAM_ERROR", "tartype无效: 仅支持gzip"),
    };
    let now = sim.clock.now();
    let fail_first = sim.chaos.read().await.bill.fail_first_download;
    let (issued, fail) = {
        let mut state = sim.state.lock().await;
        state.bill_downloads.retain(|_, b| now < b.expires_at);
        let issued = q.token.as_ref().and_then(|token| state.bill_downloads.get(token).cloned());
        // The first download of a day fails once, whichever token it uses.
        let fail = fail_first && issued.as_ref().is_some_and(|b| state.bill_download_failed_days.insert(b.day));
        (issued, fail)
    };
    let token = BillToken(q.token.clone().unwrap_or_default());
    let mut response = match issued {
        None => wechat_error(StatusCode::BAD_REQUEST, "INVALID_REQUEST", "下载链接已过期或token无效, 请重新申请账单"),
        Some(_) if fail => (StatusCode::BAD_GATEWAY, "502 Bad Gateway").into_response(),
        Some(issued) => match file::download_body(&issued.bill, gzip, issued.truncate) {
            Ok(body) => ([(header::CONTENT_TYPE, "application/octet-stream")], body).into_response(),
            Err(_) => wechat_error(StatusCode::INTERNAL_SERVER_ERROR, "SYSTEM_ERROR", "系统错误"),
        },
    };
    response.extensions_mut().insert(token);
    response
}

#[cfg(test)]
mod http_tests;
