//! `check_order`: the poller's question to WeChat about one unpaid order.

use crate::domain::OutTradeNo;
use crate::worker::context::JobContext;

use super::JobError;

pub async fn run(ctx: &JobContext, out_trade_no: &str) -> Result<(), JobError> {
    let no = OutTradeNo::parse(out_trade_no).map_err(JobError::bad_payload)?;
    let outcome = ctx.sync.check(&no).await?;
    tracing::debug!(order.out_trade_no = out_trade_no, outcome = outcome.label(), "order checked");
    Ok(())
}
