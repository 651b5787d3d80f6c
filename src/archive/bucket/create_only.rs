//! Create-only multipart uploads, for tars: the object takes its key only if
//! no object has it (`If-None-Match: *` on the completion), so a packer that
//! lost its collection without knowing it can never put its tar over the one
//! another packer wrote (and whose loose files that packer then removed).
//!
//! The upload runs step by step so the caller can record the upload id
//! before any part goes up, and check its lease again just before the
//! completion. object_store sends a conditional completion only for its own
//! copies, so the completion here is a request object_store presigns (SigV4,
//! with the upload id and the `If-None-Match` header in the signature) and
//! this module sends.

use super::{Bucket, BucketError, PART_BYTES, attributes, without_error_body};
use object_store::multipart::{MultipartStore, PartId};
use object_store::signer::{HeaderValue, Method, SignedUrlOptions, Signer};
use object_store::{PutMultipartOptions, PutPayload};
use std::path::Path;
use std::time::Duration;

/// How long a presigned completion stays valid.
const COMPLETION_URL_LIFE: Duration = Duration::from_secs(15 * 60);

/// Tries of a completion that failed in transit or with a 5xx.
const COMPLETION_TRIES: u32 = 5;

/// Parts in flight at once.
const PARTS_IN_FLIGHT: usize = 2;

/// What a create-only completion found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completed {
    /// The object is ours.
    Created,
    /// An object already had the key; ours was not put. (Or, after a
    /// completion whose answer was lost, ours: the caller compares.)
    KeyTaken,
}

impl Bucket {
    /// Begins a multipart upload to `path` whose object will carry
    /// `sha256` as user metadata; returns its upload id.
    pub async fn begin_upload(&self, path: &Path, sha256: &str) -> Result<String, BucketError> {
        let key = self.key(path)?;
        let options = PutMultipartOptions {
            attributes: attributes(path, vec![(super::META_SHA256, sha256.to_string())]),
            ..Default::default()
        };
        self.store
            .create_multipart_opts(&key, options)
            .await
            .map_err(self.failed("PUT (begin multipart)", path))
    }

    /// Sends the local file `local` as the parts of upload `upload_id`,
    /// [`PART_BYTES`] each, a few at a time.
    pub async fn upload_parts(
        &self,
        local: &Path,
        path: &Path,
        upload_id: &str,
    ) -> Result<Vec<PartId>, BucketError> {
        use tokio::io::AsyncReadExt;
        let key = self.key(path)?;
        let id = upload_id.to_string();
        let local_error = |error| BucketError::Local {
            path: local.to_path_buf(),
            error,
        };
        let mut file = tokio::fs::File::open(local).await.map_err(local_error)?;
        let mut parts: Vec<Option<PartId>> = Vec::new();
        let mut in_flight = tokio::task::JoinSet::new();
        let settle =
            |joined: Result<(usize, object_store::Result<PartId>), tokio::task::JoinError>,
             parts: &mut Vec<Option<PartId>>|
             -> Result<(), BucketError> {
                let (index, sent) = joined.map_err(|e| BucketError::Request {
                    op: "PUT (part)",
                    path: path.to_path_buf(),
                    message: e.to_string(),
                })?;
                parts[index] = Some(sent.map_err(self.failed("PUT (part)", path))?);
                Ok(())
            };
        loop {
            let mut chunk = Vec::with_capacity(PART_BYTES);
            while chunk.len() < PART_BYTES {
                let read = (&mut file)
                    .take((PART_BYTES - chunk.len()) as u64)
                    .read_to_end(&mut chunk)
                    .await
                    .map_err(local_error)?;
                if read == 0 {
                    break;
                }
            }
            // The file is all sent (S3 needs one part even for an empty
            // object, so an empty file sends one empty part).
            if chunk.is_empty() && !parts.is_empty() {
                break;
            }
            let full = chunk.len() == PART_BYTES;
            let index = parts.len();
            parts.push(None);
            let (store, key, id) = (self.store.clone(), key.clone(), id.clone());
            in_flight.spawn(async move {
                let sent = store
                    .put_part(&key, &id, index, PutPayload::from(chunk))
                    .await;
                (index, sent)
            });
            while in_flight.len() >= PARTS_IN_FLIGHT {
                if let Some(joined) = in_flight.join_next().await {
                    settle(joined, &mut parts)?;
                }
            }
            if !full {
                break;
            }
        }
        // Every part in flight lands before the list is handed on.
        while let Some(joined) = in_flight.join_next().await {
            settle(joined, &mut parts)?;
        }
        parts
            .into_iter()
            .collect::<Option<Vec<PartId>>>()
            .ok_or_else(|| BucketError::Request {
                op: "PUT (part)",
                path: path.to_path_buf(),
                message: "a part was not sent".into(),
            })
    }

    /// Completes upload `upload_id` only if no object has the key yet.
    pub async fn complete_create_only(
        &self,
        path: &Path,
        upload_id: &str,
        parts: &[PartId],
    ) -> Result<Completed, BucketError> {
        let key = self.key(path)?;
        let failed = |message: String| BucketError::Request {
            op: "POST (complete multipart)",
            path: path.to_path_buf(),
            message,
        };
        let options = SignedUrlOptions::default()
            .with_query([("uploadId", upload_id)])
            .with_signed_header(
                object_store::signer::HeaderName::from_static("if-none-match"),
                HeaderValue::from_static("*"),
            );
        let url = self
            .store
            .signed_url_opts(Method::POST, &key, COMPLETION_URL_LIFE, &options)
            .await
            .map_err(self.failed("POST (complete multipart)", path))?;
        let body = completion_body(parts);
        let mut last_error = String::new();
        for attempt in 0..COMPLETION_TRIES {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(250 << attempt)).await;
            }
            let sent = self
                .http
                .post(url.clone())
                .header("if-none-match", "*")
                .header("content-type", "application/xml")
                .body(body.clone())
                .send()
                .await;
            let response = match sent {
                Ok(response) => response,
                // The URL carries the signature: say what failed, not where.
                Err(e) => {
                    last_error = format!("the request failed: {}", e.without_url());
                    continue;
                }
            };
            let status = response.status();
            let text = match response.text().await {
                Ok(text) => text,
                Err(e) => {
                    last_error = format!("the answer was cut: {}", e.without_url());
                    continue;
                }
            };
            if status == reqwest::StatusCode::PRECONDITION_FAILED {
                return Ok(Completed::KeyTaken);
            }
            // S3 may answer 200 and put its error in the body.
            let error_in_body = text.contains("<Error>");
            if status.is_success() && !error_in_body {
                return Ok(Completed::Created);
            }
            last_error = format!("{status}: {}", without_error_body(&text));
            let retryable = status.is_server_error() || (status.is_success() && error_in_body);
            if !retryable {
                break;
            }
        }
        let mut message = last_error;
        for secret in &self.redactions {
            message = message.replace(secret.expose(), "[redacted]");
        }
        Err(failed(message))
    }

    /// Aborts upload `upload_id`: its parts go, and it can no longer
    /// complete. An upload already over (completed, aborted) is fine.
    pub async fn abort_upload(&self, path: &Path, upload_id: &str) -> Result<(), BucketError> {
        let key = self.key(path)?;
        match self
            .store
            .abort_multipart(&key, &upload_id.to_string())
            .await
        {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => {
                let error = self.failed("DELETE (abort multipart)", path)(e);
                if error.to_string().contains("NoSuchUpload") {
                    Ok(())
                } else {
                    Err(error)
                }
            }
        }
    }
}

/// The CompleteMultipartUpload document: each part's ETag by number.
fn completion_body(parts: &[PartId]) -> String {
    let mut body =
        String::from("<CompleteMultipartUpload xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">");
    for (index, part) in parts.iter().enumerate() {
        let etag = part
            .content_id
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;");
        body.push_str(&format!(
            "<Part><PartNumber>{}</PartNumber><ETag>{etag}</ETag></Part>",
            index + 1
        ));
    }
    body.push_str("</CompleteMultipartUpload>");
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_completion_lists_parts_by_number_with_their_etags_escaped() {
        let parts = [
            PartId {
                content_id: "\"a1\"".into(),
            },
            PartId {
                content_id: "\"b&2\"".into(),
            },
        ];
        assert_eq!(
            completion_body(&parts),
            "<CompleteMultipartUpload xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
             <Part><PartNumber>1</PartNumber><ETag>\"a1\"</ETag></Part>\
             <Part><PartNumber>2</PartNumber><ETag>\"b&amp;2\"</ETag></Part>\
             </CompleteMultipartUpload>"
        );
    }
}
