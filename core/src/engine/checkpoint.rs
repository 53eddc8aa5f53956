//! Checkpoints: a running attempt saves how far it got, durably, and the step's next attempt
//! (a retry, a crashed worker's successor, an operator's retry) starts from it
//! ([`crate::Job::checkpoint`]).

use serde_json::Value;

use super::decide;
use super::tx::TxCx;
use super::Engine;
use crate::error::{Error, Result};
use crate::protocol::JobKey;
use crate::store::CheckpointSave;

impl Engine {
    /// Saves `value` as the checkpoint of the step `key` runs, committed (to disk, at the
    /// store's durability) before it returns. Only the attempt that holds the step may save:
    /// an attempt whose lease was taken over, or whose step has finished, gets
    /// [`Error::Conflict`] and nothing is written. A value PostgreSQL cannot store (a string
    /// with a NUL character) is [`Error::Validation`], on both backends.
    pub async fn save_checkpoint(&self, key: &JobKey, value: &Value) -> Result<()> {
        if let Some(path) = decide::nul_path(value) {
            return Err(Error::Validation(format!(
                "the checkpoint cannot be stored: the string at {path} contains a NUL character (\\u0000)"
            )));
        }
        let text = value.to_string();
        let mut cx = TxCx::begin(self, self.now()).await?;
        let now = cx.now;
        let saved = cx
            .db()?
            .save_checkpoint(&CheckpointSave {
                step_id: key.step_id,
                attempt: key.attempt as i64,
                checkpoint: &text,
                now,
            })
            .await?;
        if !saved {
            return Err(Error::Conflict(format!(
                "step {} of task {} is no longer running attempt {}: its checkpoint was not saved",
                key.step_id, key.task_id, key.attempt
            )));
        }
        cx.finish(None).await.map(drop)
    }
}
