//! Unit tests of the quotas: keys, bursts, the bounded tables and the global login rate.

use super::*;

fn settings() -> QuotaSettings {
    QuotaSettings {
        login_per_ip_per_min: 60,
        login_per_ip_burst: 3,
        login_per_code_per_min: 1,
        login_per_code_burst: 2,
        login_concurrency: 2,
        login_calls_per_sec: 0,
        orders_create_per_min: 6,
        orders_create_burst: 2,
        orders_refresh_per_min: 0,
        orders_refresh_burst: 0,
        open_orders_per_user: 2,
        max_keys: 100,
    }
}

fn ip(s: &str) -> Option<IpAddr> {
    Some(s.parse().unwrap())
}

#[test]
fn each_address_has_its_own_login_quota_with_a_retry_after() {
    let quotas = Quotas::new(&settings(), Metrics::new());
    for i in 0..3 {
        drop(quotas.login(ip("10.0.0.1"), &format!("code{i}")).unwrap());
    }
    let refusal = quotas.login(ip("10.0.0.1"), "code9").unwrap_err();
    assert_eq!(refusal.quota, QuotaName::LoginIp);
    assert!(refusal.retry_after > Duration::ZERO && refusal.retry_after <= Duration::from_secs(1), "{refusal:?}");
    assert!(quotas.login(ip("10.0.0.2"), "code9").is_ok(), "another address is not affected");
    assert_eq!(quotas.0.metrics.quota_refusals.with_label_values(&["login_ip"]).get(), 1);
}

#[test]
fn ipv6_addresses_of_one_subscriber_share_a_quota() {
    let quotas = Quotas::new(&settings(), Metrics::new());
    for i in 0..3 {
        drop(quotas.login(ip(&format!("2001:db8::{i}")), &format!("c{i}")).unwrap());
    }
    assert_eq!(quotas.login(ip("2001:db8::ffff:1"), "c9").unwrap_err().quota, QuotaName::LoginIp);
    assert!(quotas.login(ip("2001:db8:0:1::1"), "c9").is_ok());
}

#[test]
fn a_code_is_tried_at_most_its_burst() {
    let quotas = Quotas::new(&settings(), Metrics::new());
    drop(quotas.login(ip("10.0.0.1"), "same").unwrap());
    drop(quotas.login(ip("10.0.0.2"), "same").unwrap());
    let refusal = quotas.login(ip("10.0.0.3"), "same").unwrap_err();
    assert_eq!(refusal.quota, QuotaName::LoginCode);
    assert!(refusal.retry_after > Duration::from_secs(50), "one a minute: {refusal:?}");
}

#[test]
fn login_slots_are_refused_at_once_when_all_are_held_and_freed_on_drop() {
    let quotas = Quotas::new(&settings(), Metrics::new());
    let a = quotas.login(ip("10.0.0.1"), "a").unwrap();
    let _b = quotas.login(ip("10.0.0.2"), "b").unwrap();
    assert_eq!(quotas.login(ip("10.0.0.3"), "c").unwrap_err().quota, QuotaName::LoginConcurrency);
    drop(a);
    assert!(quotas.login(ip("10.0.0.3"), "d").is_ok());
}

#[test]
fn order_quotas_are_per_user_and_a_zero_rate_is_off() {
    let quotas = Quotas::new(&settings(), Metrics::new());
    quotas.create_order(1).unwrap();
    quotas.create_order(1).unwrap();
    assert_eq!(quotas.create_order(1).unwrap_err().quota, QuotaName::OrdersCreate);
    quotas.create_order(2).unwrap();
    for _ in 0..1000 {
        quotas.order_request(1).unwrap();
    }
    assert!(quotas.open_orders(1).is_ok());
    assert_eq!(quotas.open_orders(2).unwrap_err().quota, QuotaName::OpenOrders);
}

#[test]
fn ipv4_mapped_addresses_are_keyed_as_their_ipv4_address() {
    assert_eq!(subscriber_prefix("::ffff:192.0.2.1".parse().unwrap()), "192.0.2.1".parse::<IpAddr>().unwrap());
    let quotas = Quotas::new(&settings(), Metrics::new());
    for i in 0..3 {
        drop(quotas.login(ip("::ffff:192.0.2.1"), &format!("m{i}")).unwrap());
    }
    assert_eq!(quotas.login(ip("192.0.2.1"), "m9").unwrap_err().quota, QuotaName::LoginIp, "one client");
    assert!(quotas.login(ip("::ffff:192.0.2.2"), "m9").is_ok(), "another IPv4 client has its own quota");
}

#[test]
fn a_full_table_charges_new_keys_to_one_overflow_key_and_keeps_limiting_known_ones() {
    let quotas = Quotas::new(&QuotaSettings { max_keys: 50, ..settings() }, Metrics::new());
    let outcomes: Vec<Option<QuotaName>> = (0..10_000u32)
        .map(|i| {
            let address = IpAddr::V4(std::net::Ipv4Addr::from(i));
            quotas.login(Some(address), &format!("code{i}")).err().map(|refusal| refusal.quota)
        })
        .collect();
    assert!(outcomes[..50].iter().all(Option::is_none), "keys the table holds pass: {:?}", &outcomes[..50]);
    // Past the cap every new address shares one key, and every new code another: the flood gets
    // one client's bursts (address 3, code 2), then refusals.
    assert_eq!(outcomes[50..53], [None, None, Some(QuotaName::LoginCode)], "the overflow keys' bursts");
    assert!(outcomes[53..].iter().all(|o| *o == Some(QuotaName::LoginIp)), "the rest are refused per address");
    assert!(quotas.0.login_ip.len() <= 50 && quotas.0.login_code.len() <= 50, "memory stays bounded");
    assert_eq!(quotas.0.login_ip.overflowed(), 10_000 - 50, "checks charged to the overflow key are counted");
    // Address 0 and codes 3-5 were recorded before the table filled: they keep their own
    // quotas (not the spent overflow ones), and address 0's burst of 3 is still enforced.
    let first = Some(IpAddr::V4(std::net::Ipv4Addr::from(0u32)));
    drop(quotas.login(first, "code3").unwrap());
    drop(quotas.login(first, "code4").unwrap());
    assert_eq!(quotas.login(first, "code5").unwrap_err().quota, QuotaName::LoginIp);
}

#[test]
fn login_calls_have_a_global_rate_whatever_the_keys() {
    let quotas = Quotas::new(&QuotaSettings { login_calls_per_sec: 5, ..settings() }, Metrics::new());
    for i in 0..5u32 {
        drop(quotas.login(Some(IpAddr::V4(std::net::Ipv4Addr::from(i))), &format!("g{i}")).unwrap());
    }
    let refusal = quotas.login(ip("198.51.100.1"), "g9").unwrap_err();
    assert_eq!(refusal.quota, QuotaName::LoginGlobal);
    assert!(refusal.retry_after > Duration::ZERO && refusal.retry_after <= Duration::from_secs(1), "{refusal:?}");
    assert_eq!(quotas.0.metrics.quota_refusals.with_label_values(&["login_global"]).get(), 1);
    assert_eq!(quotas.0.login_slots.available_permits(), 2, "a refused login holds no slot");
}

#[test]
fn refilled_keys_are_forgotten_by_the_sweep() {
    let quotas = Quotas::new(
        &QuotaSettings { login_per_ip_per_min: 60_000, login_per_ip_burst: 1, ..settings() },
        Metrics::new(),
    );
    for i in 0..20u32 {
        let _ = quotas.login(Some(IpAddr::V4(std::net::Ipv4Addr::from(i))), "x");
    }
    assert_eq!(quotas.0.login_ip.len(), 20);
    // A key refills in 1 ms at 60,000/min: after the sweep interval all are forgotten.
    std::thread::sleep(SWEEP_INTERVAL + Duration::from_millis(10));
    let _ = quotas.login(ip("192.0.2.1"), "y");
    assert_eq!(quotas.0.login_ip.len(), 1, "only the new key is left");
}
