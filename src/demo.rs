//! A scripted mini-program: what the real client does over HTTP, used by `demo`, the tests
//! and the benchmarks. It logs in with a code from the simulator (`wx.login`), orders,
//! checks the paySign, has the simulator "pay", and waits for our API to say SUCCESS.

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};

use crate::wechat::sign::pay_sign_message;
use crate::wechat::verify::RsaVerifier;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{step}: HTTP {status}: {body}")]
    Status { step: &'static str, status: u16, body: String },
    #[error("{step}: {message}")]
    Other { step: &'static str, message: String },
}

/// One simulated user of the mini-program.
#[derive(Debug, Clone)]
pub struct MiniProgram {
    http: reqwest::Client,
    api: String,
    sim: String,
    token: Option<String>,
}

/// An order as the client saw it being created.
#[derive(Debug, Clone)]
pub struct PlacedOrder {
    pub out_trade_no: String,
    pub amount_fen: i64,
    pub payment: Value,
}

impl MiniProgram {
    pub fn new(api_base: &str, sim_base: &str) -> Self {
        Self {
            http: reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap_or_default(),
            api: api_base.trim_end_matches('/').to_owned(),
            sim: sim_base.trim_end_matches('/').to_owned(),
            token: None,
        }
    }

    /// The same client acting with an existing bearer token.
    pub fn with_token(mut self, token: String) -> Self {
        self.token = Some(token);
        self
    }

    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// `wx.login` at the simulator, then `POST /api/login`. Returns the login response.
    pub async fn login(&mut self, openid: Option<&str>) -> Result<Value, ClientError> {
        let code = self.sim_code(openid).await?;
        let body = self.post("login", "/api/login", json!({ "code": code })).await?;
        self.token = body.get("token").and_then(Value::as_str).map(str::to_owned);
        Ok(body)
    }

    /// A fresh `wx.login` code from the simulator.
    pub async fn sim_code(&self, openid: Option<&str>) -> Result<String, ClientError> {
        let response = self
            .http
            .post(format!("{}/sim/login-codes", self.sim))
            .json(&json!({ "openid": openid }))
            .send()
            .await
            .map_err(|e| other("wx.login", &e))?;
        let value: Value = response.json().await.map_err(|e| other("wx.login", &e))?;
        value
            .get("code")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| ClientError::Other { step: "wx.login", message: "no code".into() })
    }

    pub async fn create_order(&self, product_id: &str, quantity: i64) -> Result<PlacedOrder, ClientError> {
        let body =
            self.post("create order", "/api/orders", json!({ "product_id": product_id, "quantity": quantity })).await?;
        Ok(PlacedOrder {
            out_trade_no: body.get("out_trade_no").and_then(Value::as_str).unwrap_or_default().to_owned(),
            amount_fen: body.get("amount_fen").and_then(Value::as_i64).unwrap_or_default(),
            payment: body.get("payment").cloned().unwrap_or(Value::Null),
        })
    }

    /// The user taps "pay" (the simulator settles the payment and starts notifying).
    pub async fn pay(&self, out_trade_no: &str) -> Result<Value, ClientError> {
        let response = self
            .http
            .post(format!("{}/sim/pay", self.sim))
            .json(&json!({ "out_trade_no": out_trade_no }))
            .send()
            .await
            .map_err(|e| other("pay", &e))?;
        read("pay", response).await
    }

    pub async fn order(&self, out_trade_no: &str) -> Result<Value, ClientError> {
        self.get("order status", &format!("/api/orders/{out_trade_no}")).await
    }

    /// Polls our API until the order has `status` or `timeout` passes.
    pub async fn wait_for_status(
        &self,
        out_trade_no: &str,
        status: &str,
        timeout: Duration,
    ) -> Result<Value, ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            let order = self.order(out_trade_no).await?;
            if order.get("status").and_then(Value::as_str) == Some(status) {
                return Ok(order);
            }
            if Instant::now() > deadline {
                return Err(ClientError::Other {
                    step: "wait",
                    message: format!("order {out_trade_no} still {order} after {timeout:?}"),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn get(&self, step: &'static str, path: &str) -> Result<Value, ClientError> {
        let mut request = self.http.get(format!("{}{path}", self.api));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        read(step, request.send().await.map_err(|e| other(step, &e))?).await
    }

    pub async fn post(&self, step: &'static str, path: &str, body: Value) -> Result<Value, ClientError> {
        let mut request = self.http.post(format!("{}{path}", self.api)).json(&body);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        read(step, request.send().await.map_err(|e| other(step, &e))?).await
    }
}

/// Checks `paySign` the way WeChat's client does, with the merchant public key.
pub fn verify_pay_sign(payment: &Value, merchant_public: &RsaVerifier) -> bool {
    let field = |name: &str| payment.get(name).and_then(Value::as_str).unwrap_or_default();
    let Ok(timestamp) = field("timeStamp").parse::<i64>() else {
        return false;
    };
    let message = pay_sign_message(field("appId"), timestamp, field("nonceStr"), field("package"));
    let Ok(signature) = B64.decode(field("paySign")) else {
        return false;
    };
    field("signType") == "RSA" && merchant_public.verify(message.as_bytes(), &signature)
}

fn other(step: &'static str, err: &reqwest::Error) -> ClientError {
    ClientError::Other { step, message: err.to_string() }
}

async fn read(step: &'static str, response: reqwest::Response) -> Result<Value, ClientError> {
    let status = response.status();
    let text = response.text().await.map_err(|e| other(step, &e))?;
    if !status.is_success() {
        return Err(ClientError::Status { step, status: status.as_u16(), body: text });
    }
    if text.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_str(&text).map_err(|e| ClientError::Other { step, message: format!("bad JSON: {e}") })
}
