//! `check_refund`: the poller's question to WeChat about one unfinished refund.

use crate::worker::context::JobContext;

use super::JobError;

pub async fn run(ctx: &JobContext, out_refund_no: &str) -> Result<(), JobError> {
    ctx.refunds.check(out_refund_no).await?;
    Ok(())
}
