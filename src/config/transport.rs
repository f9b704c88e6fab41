//! Where our WeChat traffic may go. WeChat Pay and the login API are HTTPS only (protocol §0):
//! over plain http the AppSecret (in the jscode2session query string) and every signed
//! request would travel in clear. WeChat also refuses a `notify_url` that is not https, longer
//! than 255 bytes or carrying a query string (§3.1), and it does so per order, at prepay time:
//! caught here, it is one line at start-up instead of every order failing.
//!
//! `wechat.allow_insecure_http = true` lifts the https rule (only) for local runs against
//! `wxpay-recon sim`, which listens on plain http.

use super::{ConfigError, Problems, WechatSettings};

/// WeChat's limit on `notify_url` (payment; refunds allow 256, the stricter one applies).
pub const NOTIFY_URL_MAX_BYTES: usize = 255;

const INSECURE_HINT: &str = "(or set wechat.allow_insecure_http = true for local runs against the simulator)";

/// Every transport problem of the WeChat settings, each naming its setting.
pub fn check(wechat: &WechatSettings) -> Result<(), ConfigError> {
    let mut problems = Problems::default();
    for (setting, url) in
        [("wechat.pay_base_url", &wechat.pay_base_url), ("wechat.login_base_url", &wechat.login_base_url)]
    {
        if let Err(issue) = scheme_allowed(url, wechat.allow_insecure_http) {
            problems.push(ConfigError::invalid(setting, issue));
        }
    }
    if !wechat.notify_url.is_empty() {
        problems.check(notify_url(&wechat.notify_url, wechat.allow_insecure_http));
    }
    problems.finish()
}

/// A `notify_url` WeChat accepts: https (http only when allowed), at most 255 bytes, no
/// query string or fragment.
pub fn notify_url(url: &str, allow_insecure_http: bool) -> Result<(), ConfigError> {
    const SETTING: &str = "wechat.notify_url";
    let mut problems = Problems::default();
    if let Err(issue) = scheme_allowed(url, allow_insecure_http) {
        problems.push(ConfigError::invalid(SETTING, format!("{url:?}: {issue}")));
    }
    if url.len() > NOTIFY_URL_MAX_BYTES {
        problems.push(ConfigError::invalid(
            SETTING,
            format!("{} bytes; WeChat takes at most {NOTIFY_URL_MAX_BYTES}", url.len()),
        ));
    }
    if url.contains(['?', '#']) {
        problems.push(ConfigError::invalid(SETTING, "must not carry a query string or fragment (WeChat refuses it)"));
    }
    problems.finish()
}

fn scheme_allowed(url: &str, allow_insecure_http: bool) -> Result<(), String> {
    let host = |rest: &str| rest.split(['/', '?', '#']).next().is_some_and(|h| !h.is_empty());
    if let Some(rest) = url.strip_prefix("https://") {
        return if host(rest) { Ok(()) } else { Err("has no host".into()) };
    }
    if let Some(rest) = url.strip_prefix("http://") {
        return match (allow_insecure_http, host(rest)) {
            (true, true) => Ok(()),
            (true, false) => Err("has no host".into()),
            (false, _) => Err(format!("must be https: WeChat is HTTPS only {INSECURE_HINT}")),
        };
    }
    Err("must be an https:// URL".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pay: &str, login: &str, notify: &str, allow: bool) -> WechatSettings {
        use figment::providers::{Format, Toml};
        let mut settings: super::super::Settings =
            figment::Figment::from(Toml::string(super::super::DEFAULT_TOML)).extract().expect("defaults");
        settings.wechat.pay_base_url = pay.into();
        settings.wechat.login_base_url = login.into();
        settings.wechat.notify_url = notify.into();
        settings.wechat.allow_insecure_http = allow;
        settings.wechat
    }

    fn settings_at_fault(err: ConfigError) -> Vec<String> {
        err.into_problems().into_iter().map(|p| p.setting).collect()
    }

    #[test]
    fn production_hosts_and_an_https_notify_url_pass() {
        let wechat = settings(
            "https://api.mch.weixin.qq.com",
            "https://api.weixin.qq.com",
            "https://shop.example/api/pay/notify",
            false,
        );
        assert!(check(&wechat).is_ok());
    }

    #[test]
    fn http_is_refused_everywhere_unless_allowed() {
        let wechat =
            settings("http://127.0.0.1:8090", "http://127.0.0.1:8090", "http://127.0.0.1:8080/api/pay/notify", false);
        let err = check(&wechat).expect_err("http refused");
        assert!(err.to_string().starts_with("3 configuration problems:"), "{err}");
        assert!(err.to_string().contains("wechat.allow_insecure_http"), "{err}");
        assert_eq!(settings_at_fault(err), ["wechat.pay_base_url", "wechat.login_base_url", "wechat.notify_url"]);
        let allowed =
            settings("http://127.0.0.1:8090", "http://127.0.0.1:8090", "http://127.0.0.1:8080/api/pay/notify", true);
        assert!(check(&allowed).is_ok());
    }

    #[test]
    fn notify_url_rules_hold_even_when_http_is_allowed() {
        let long = format!("https://shop.example/{}", "n".repeat(240));
        assert!(notify_url(&long, true).is_err(), "{} bytes", long.len());
        assert!(notify_url(&long[..NOTIFY_URL_MAX_BYTES], false).is_ok());
        assert!(notify_url("https://shop.example/notify?shop=1", true).is_err());
        assert!(notify_url("ftp://shop.example/notify", true).is_err());
        assert!(notify_url("https:///notify", true).is_err());
    }
}
