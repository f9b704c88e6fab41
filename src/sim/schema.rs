//! The request fields WeChat documents, per endpoint, so the simulator refuses the others as
//! WeChat does: `400 PARAM_ERROR` "请求中含有未在API文档中定义的参数" with `detail.value` the
//! JSON pointers of the unknown keys, e.g. `["/body/payer/foo"]` (protocol §0). Computed by
//! walking the received JSON against the documented tree, not from serde's message: serde stops
//! at the first unknown key and names it without its path.

use serde_json::Value;

/// The shape of a documented value.
#[derive(Debug)]
pub enum Shape {
    /// A string, number, boolean or array of scalars: no keys inside to check.
    Leaf,
    /// An object with exactly these documented keys.
    Object(&'static [(&'static str, Shape)]),
    /// An array of objects of this shape.
    ArrayOf(&'static Shape),
}

use Shape::{ArrayOf, Leaf, Object};

/// `POST /v3/pay/transactions/jsapi` (protocol §5.1; the Go SDK's `jsapi.PrepayRequest`).
pub const JSAPI_PREPAY: Shape = Object(&[
    ("appid", Leaf),
    ("mchid", Leaf),
    ("description", Leaf),
    ("out_trade_no", Leaf),
    ("time_expire", Leaf),
    ("attach", Leaf),
    ("notify_url", Leaf),
    ("goods_tag", Leaf),
    ("support_fapiao", Leaf),
    ("limit_pay", Leaf),
    ("amount", Object(&[("total", Leaf), ("currency", Leaf)])),
    ("payer", Object(&[("openid", Leaf)])),
    (
        "detail",
        Object(&[
            ("cost_price", Leaf),
            ("invoice_id", Leaf),
            (
                "goods_detail",
                ArrayOf(&Object(&[
                    ("merchant_goods_id", Leaf),
                    ("wechatpay_goods_id", Leaf),
                    ("goods_name", Leaf),
                    ("quantity", Leaf),
                    ("unit_price", Leaf),
                ])),
            ),
        ]),
    ),
    (
        "scene_info",
        Object(&[
            ("payer_client_ip", Leaf),
            ("device_id", Leaf),
            ("store_info", Object(&[("id", Leaf), ("name", Leaf), ("area_code", Leaf), ("address", Leaf)])),
        ]),
    ),
    ("settle_info", Object(&[("profit_sharing", Leaf)])),
]);

/// `POST /v3/pay/transactions/out-trade-no/{no}/close` (protocol §5.4).
pub const CLOSE: Shape = Object(&[("mchid", Leaf)]);

/// Documented keys our wire types do not model: accepted, then ignored by the simulator.
pub const JSAPI_IGNORED: &[&str] = &["goods_tag", "support_fapiao", "limit_pay", "detail", "scene_info", "settle_info"];

/// JSON pointers (`/body/...`) of every key in `value` that `shape` does not document, sorted
/// (so the answer does not depend on how the JSON object was stored).
pub fn unknown_fields(value: &Value, shape: &Shape) -> Vec<String> {
    let mut found = Vec::new();
    walk(value, shape, "/body", &mut found);
    found.sort();
    found
}

fn walk(value: &Value, shape: &Shape, at: &str, found: &mut Vec<String>) {
    match (shape, value) {
        (Object(fields), Value::Object(map)) => {
            for (key, inner) in map {
                let pointer = format!("{at}/{}", key.replace('~', "~0").replace('/', "~1"));
                match fields.iter().find(|(name, _)| name == key) {
                    Some((_, shape)) => walk(inner, shape, &pointer, found),
                    None => found.push(pointer),
                }
            }
        }
        (ArrayOf(shape), Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                walk(item, shape, &format!("{at}/{i}"), found);
            }
        }
        // A scalar where an object is documented is a type error, which the field checks
        // report; nothing here is an unknown key.
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn unknown_keys_are_named_by_pointer_at_every_depth() {
        let body = json!({
            "appid": "wx1", "mchid": "1", "description": "d", "out_trade_no": "n", "notify_url": "https://x/n",
            "amount": {"total": 1, "currency": "CNY", "cents": 1},
            "payer": {"openid": "o", "foo": 1},
            "detail": {"goods_detail": [{"goods_name": "g"}, {"colour": "red"}]},
            "sub_mchid": "2"
        });
        assert_eq!(
            unknown_fields(&body, &JSAPI_PREPAY),
            ["/body/amount/cents", "/body/detail/goods_detail/1/colour", "/body/payer/foo", "/body/sub_mchid"]
        );
    }

    #[test]
    fn documented_requests_have_no_unknown_keys() {
        let body = json!({
            "appid": "wx1", "mchid": "1", "description": "d", "out_trade_no": "n", "notify_url": "https://x/n",
            "time_expire": "2026-12-02T10:00:00+08:00", "attach": "a", "goods_tag": "t", "support_fapiao": false,
            "amount": {"total": 1}, "payer": {"openid": "o"},
            "scene_info": {"payer_client_ip": "1.2.3.4", "store_info": {"id": "s"}}, "settle_info": {"profit_sharing": false}
        });
        assert!(unknown_fields(&body, &JSAPI_PREPAY).is_empty());
        assert!(unknown_fields(&json!({"mchid": "1"}), &CLOSE).is_empty());
        assert_eq!(unknown_fields(&json!({"mchid": "1", "appid": "wx"}), &CLOSE), ["/body/appid"]);
    }
}
