//! `check_refund`: the poller's question to WeChat about one unfinished refund.

use crate::domain::OutRefundNo;
use crate::worker::context::JobContext;

use super::JobError;

pub async fn run(ctx: &JobContext, out_refund_no: &str) -> Result<(), JobError> {
    let no = OutRefundNo::parse(out_refund_no).map_err(JobError::bad_payload)?;
    ctx.refunds.check(&no).await?;
    Ok(())
}
