//! Job: apply one stored notification to its order (see `services::apply`). Only entries a
//! batch could not apply come here (`worker::inbox_applier`); the rest never pass through the
//! queue.

use super::JobError;
use crate::worker::context::JobContext;

pub async fn run(ctx: &JobContext, inbox_id: i64) -> Result<(), JobError> {
    ctx.applier.apply_stored(inbox_id).await?;
    Ok(())
}
