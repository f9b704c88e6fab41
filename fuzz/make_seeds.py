#!/usr/bin/env python3
"""Writes the committed seed corpora (fuzz/corpus/<target>/seed-*): small, meaningful inputs
from the protocol's own samples and the repository's test vectors. Run from the repository
root; the input formats are documented in src/fuzzing.rs."""
import gzip
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read(path):
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        return f.read()


def const(source, name):
    return re.search(r'pub const %s: &str = "([^"]*)";' % name, source).group(1)


def write(target, name, data):
    d = os.path.join(ROOT, "fuzz", "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode("utf-8"))


keys = read("src/wechat/testkeys.rs")
D6_ENVELOPE = (
    '{"id":"621f277d-2eea-5236-aa7a-45d0e9efe625","create_time":"2021-03-03T10:34:57+08:00",'
    '"resource_type":"encrypt-resource","event_type":"TRANSACTION.SUCCESS","summary":"支付成功",'
    '"resource":{"original_type":"transaction","algorithm":"AEAD_AES_256_GCM","ciphertext":"%s",'
    '"associated_data":"transaction","nonce":"Fmwp04ry88f3"}}' % const(keys, "D6_CIPHERTEXT")
)
SERIAL = "PUB_KEY_ID_0000000000000024101100397200000006"
TS, NONCE, SIG = const(keys, "D6_TIMESTAMP"), const(keys, "D6_NONCE"), const(keys, "D6_SIGNATURE")
D6_PLAIN = re.search(r"pub const D6_PLAINTEXT: &str = r#\"(.*?)\"#;", keys).group(1)
D7_PLAIN = re.search(r"pub const D7_PLAINTEXT: &str = r#\"(.*?)\"#;", keys).group(1)


def notify(flags, ts, nonce, sig, serial, kind, body):
    return bytes([flags]) + b"\0".join(x.encode("utf-8") for x in [ts, nonce, sig, serial, kind, body])


SCHEME = "WECHATPAY2-SHA256-RSA2048"
SIGN, SEAL, REFUND = 1 << 5, 1 << 6, 1 << 7
write("notify", "d6-real-notification", notify(0, TS, NONCE, SIG, SERIAL, SCHEME, D6_ENVELOPE))
write("notify", "signed-sealed-payment", notify(SIGN | SEAL, TS, NONCE, "", SERIAL, SCHEME, D6_PLAIN))
write("notify", "signed-sealed-refund", notify(SIGN | SEAL | REFUND, TS, NONCE, "", SERIAL, SCHEME, D7_PLAIN))
write("notify", "signed-envelope", notify(SIGN, TS, NONCE, "", SERIAL, "", D6_ENVELOPE))
write("notify", "missing-serial", notify(1 << 3, TS, NONCE, SIG, "", SCHEME, D6_ENVELOPE))
write("notify", "stale-timestamp", notify(0, "1614000000", NONCE, SIG, SERIAL, SCHEME, D6_ENVELOPE))
write("notify", "extreme-timestamp", notify(0, "-9223372036854775808", NONCE, SIG, SERIAL, SCHEME, D6_ENVELOPE))
write("notify", "signtest-probe", notify(0, TS, NONCE, "WECHATPAY/SIGNTEST/abcd", SERIAL, SCHEME, D6_ENVELOPE))
write("notify", "unknown-serial", notify(0, TS, NONCE, SIG, "5157F09EFDC096DE15EBE81A47057A7232F1B8E1", SCHEME, "{}"))
write("notify", "bad-base64", notify(0, TS, NONCE, "!!!not-base64", SERIAL, SCHEME, D6_ENVELOPE))

row = read("src/bill/row.rs")
header = ",".join(re.findall(r'"([^"]*)"', re.search(r"pub const HEADER: \[&str; COLUMNS\] = \[(.*?)\];", row, re.S).group(1)))
summary_header = "总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额"
real_row = ("`2020-03-02 14:17:55,`wx8c4f683438292e27,`1562960801,`0,`,`4200000480202003022581846288,"
            "`2020030213120001,`o0bRy0_kzrcz3ug_eXNjp5VZrE6E,`JSAPI,`SUCCESS,`OTHERS,`CNY,`0.01,`0.00,`0,`0,"
            "`0.00,`0.00,`,`,`自己来,`98880001::我自己来测试,`0.00000,`0.30%,`0.01,`0.00,`")
refund_row = ("`2020-03-03 09:00:00,`wx8c4f683438292e27,`1562960801,`0,`,`4200000480202003022581846288,"
              "`2020030213120001,`o0bRy0_kzrcz3ug_eXNjp5VZrE6E,`JSAPI,`REFUND,`OTHERS,`CNY,`0.00,`0.00,"
              "`50300000000000000000000000001,`2020030213120001R1,`0.01,`0.00,`ORIGINAL,`SUCCESS,`自己来,`,"
              "`0.00000,`0.30%,`0.00,`0.01,`")
bom = "\ufeff"
sample = bom + "\r\n".join([header, real_row, summary_header, "`1,`0.01,`0.00,`0.00,`0.00000,`0.01,`0.00"]) + "\r\n"
write("bill", "protocol-sample", sample)
write("bill", "protocol-sample.gz", gzip.compress(sample.encode("utf-8"), mtime=0))
two = bom + "\r\n".join([header, real_row, refund_row, summary_header, "`2.0,`0.01,`0.01,`0.0,`0.00,`0.01,`0.01"]) + "\r\n"
write("bill", "payment-and-refund-sdk-style", two)
write("bill", "truncated", sample[: len(sample) // 2])
huge = real_row.replace("`0.01,`0.00,`0,`0", "`92233720368547758.07,`0.00,`0,`0", 1)
write("bill", "overflowing-totals", bom + "\r\n".join([header, huge, huge, summary_header, "`2,`0.00,`0.00,`0.00,`0.00000,`0.00,`0.00"]) + "\r\n")
# 4 MiB of zeros: about 4 KiB of gzip, four times the target's 1 MiB ceiling.
write("bill", "gzip-bomb.gz", gzip.compress(b"\0" * (4 << 20), compresslevel=9, mtime=0))

AUTH = ('WECHATPAY2-SHA256-RSA2048 mchid="1900000001",nonce_str="593BEC0C930BF1AFEB40B4A08C8FB242",'
        'signature="%s",timestamp="1554208460",serial_no="5157F09EFDC096DE15EBE81A47057A7232F1B8E1"'
        % const(keys, "V1_SIGNATURE"))
write("sim_auth", "real-header", b"\0" + "\0".join([AUTH, "GET", "/v3/certificates", ""]).encode())
write("sim_auth", "signed-post", b"\x01" + "\0".join(["593BEC0C930BF1AFEB40B4A08C8FB242", "POST",
      "/v3/pay/transactions/jsapi", '{"appid":"wx","amount":{"total":1}}']).encode())
write("sim_auth", "signed-extreme-clock", b"\x03" + "\0".join(["N0NCE", "GET", "/v3/refund/domestic/refunds/R1", ""]).encode())
write("sim_auth", "malformed-pairs", b"\0" + 'WECHATPAY2-SHA256-RSA2048 mchid=1,nonce_str="a"b",=,,timestamp="-9223372036854775808"\0GET\0/\0'.encode())

write("config", "default-toml", read("config/default.toml"))
write("config", "env-overrides", '[server]\n\0WXPAY_RECON__WECHAT__USE_DEV_KEYS=true\nWXPAY_RECON__POLL__SCHEDULE_SECS=[1,2,3]\n'
      'WXPAY_RECON__RECONCILE__MAX_BILL_PLAIN_BYTES=1\nWXPAY_RECON__DATABASE__URL=postgres://u:p@h/db\n')
write("config", "wrong-types", '[poll]\nschedule_secs = "soon"\n[orders]\ntime_expire_secs = -1\n[[catalog]]\nid = ""\nprice_fen = 0\n')
