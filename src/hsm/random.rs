//! Random bytes from the token's generator (`C_GenerateRandom`), for the Alibaba instance API's
//! GenerateRandom.

use super::error::{Context as _, HsmError};
use super::{Hsm, Retry};

/// Most bytes one call returns.
pub const MAX_RANDOM_BYTES: usize = 1024;

impl Hsm {
    /// `len` random bytes (1 to [`MAX_RANDOM_BYTES`]) from the token.
    ///
    /// # Errors
    /// Classified PKCS#11 failures.
    pub async fn generate_random(&self, len: usize) -> Result<Vec<u8>, HsmError> {
        let len = u32::try_from(len.clamp(1, MAX_RANDOM_BYTES)).expect("at most 1024");
        self.call(Retry::Once, move |session, _| {
            session.generate_random_vec(len).context("C_GenerateRandom")
        })
        .await
    }
}
