//! Async enrichment (Flink's Async I/O): many lookups in flight at once
//! from one call, for a transform that adds to each record what a service
//! knows of it.
//!
//! An [`Enricher`] looks up a batch's keys over HTTP through the host
//! ([`crate::http`]): each distinct key once, from its cache when it has a
//! fresh answer, at most `concurrency` requests in flight, each attempt
//! bounded by `timeout`, an attempt that fails for a passing reason (a
//! connection error, a timeout, 408, 429, 5xx) tried again after a backoff
//! that doubles (or the service's `Retry-After`), up to `retries` times. A
//! 2xx is [`Answer::Found`] with its body, a 404 [`Answer::Missing`]; any
//! other answer, or a passing failure that outlasts the retries, fails the
//! key for good with the reason, which the transform dead-letters with its
//! records. A batch none of whose lookups came to a definite end (none
//! answered from the cache, and each failed to connect, timed out or got
//! 408, 429 or 5xx to the last try: the service is down, or failing as a
//! whole) is a retriable error
//! instead: the host waits and tries the batch again, and nothing is
//! dead-lettered for an outage.
//!
//! The answers come back in the order they arrived, so a transform can emit
//! its records in input order (collect, then write; Flink's `ordered`) or
//! as they are answered (`unordered`). Waiting is free (it does not count
//! against the `cpu` grant) and the host interrupts it to stop, pause or
//! swap: [`Enricher::lookup`] then returns a retriable error and the batch
//! comes again.
//!
//! ```no_run
//! use std::time::Duration;
//! use sluice_sdk::enrich::{Answer, Enricher, Options};
//! use sluice_sdk::http::Request;
//!
//! # fn main() -> Result<(), sluice_sdk::Error> {
//! let mut users = Enricher::new(Options {
//!     concurrency: 100,
//!     cache_ttl: Some(Duration::from_secs(60)),
//!     ..Options::default()
//! });
//! let keys = ["7".to_owned(), "9".to_owned(), "7".to_owned()];
//! let answers = users.lookup(&keys, |k| Request::get(&format!("http://users.internal/users/{k}")))?;
//! for (key, answer) in answers {
//!     match answer {
//!         Ok(Answer::Found(body)) => { /* merge `body` into the records of `key` */ }
//!         Ok(Answer::Missing) => { /* the service has nothing for it */ }
//!         Err(reason) => { /* dead-letter its records with `reason` */ }
//!     }
//! }
//! # Ok(()) }
//! ```

use std::collections::{HashMap, VecDeque};
use std::io::ErrorKind;
use std::time::{Duration, Instant};

use crate::Error;
use crate::http::{HttpError, Pending, Request, Response};

/// The longest wait between two tries of a lookup.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// How lookups are made.
#[derive(Debug, Clone)]
pub struct Options {
    /// Requests in flight at once, at most.
    pub concurrency: usize,
    /// One attempt's limits: on connecting, on the response's head, and
    /// on its body, each.
    pub timeout: Duration,
    /// Attempts after the first, for a passing failure.
    pub retries: u32,
    /// The wait before the first retry; each next one doubles it, up to
    /// [`MAX_BACKOFF`].
    pub backoff: Duration,
    /// The longest `Retry-After` obeyed.
    pub max_retry_after: Duration,
    /// How long an answer (found or missing) is reused; `None`: no cache.
    pub cache_ttl: Option<Duration>,
    /// Answers kept at most; past it, the cache is emptied.
    pub cache_capacity: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            concurrency: 100,
            timeout: Duration::from_secs(1),
            retries: 3,
            backoff: Duration::from_millis(100),
            max_retry_after: Duration::from_secs(10),
            cache_ttl: None,
            cache_capacity: 10_000,
        }
    }
}

/// What the service said of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// A 2xx, with its body.
    Found(Vec<u8>),
    /// A 404: nothing for this key.
    Missing,
}

/// A key, and its lookup's answer or why it failed for good.
pub type Looked<'k> = (&'k str, Result<Answer, String>);

/// Looks up keys, many at once, with a cache.
#[derive(Debug)]
pub struct Enricher {
    options: Options,
    cache: HashMap<String, (Instant, Answer)>,
}

/// A lookup's next attempt.
struct Attempt {
    /// Index of the key in the distinct keys.
    key: usize,
    /// Attempts made before this one.
    made: u32,
    /// Not to be sent before.
    at: Instant,
}

/// What one attempt came to.
enum Tried {
    Done(Result<Answer, String>),
    Again {
        why: String,
        after: Option<Duration>,
    },
}

impl Enricher {
    /// An enricher with `options` (a `concurrency` of 0 is taken as 1).
    pub fn new(mut options: Options) -> Self {
        options.concurrency = options.concurrency.max(1);
        Enricher {
            options,
            cache: HashMap::new(),
        }
    }

    /// Looks up each distinct key of `keys` with the request `request`
    /// makes of it. Returns each distinct key once with its answer, or why
    /// it failed for good, in the order the answers came (cached ones
    /// first). An interrupted wait (stop, pause, swap) is a retriable
    /// error: the whole batch is tried again.
    pub fn lookup<'k>(
        &mut self,
        keys: &'k [String],
        request: impl Fn(&str) -> Request<'static>,
    ) -> Result<Vec<Looked<'k>>, Error> {
        let now = Instant::now();
        if let Some(ttl) = self.options.cache_ttl {
            self.cache
                .retain(|_, (at, _)| now.duration_since(*at) < ttl);
        }
        let mut answers = Vec::new();
        let mut distinct: Vec<&'k str> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for key in keys {
            if !seen.insert(key.as_str()) {
                continue;
            }
            match self.cache.get(key.as_str()) {
                Some((_, answer)) => answers.push((key.as_str(), Ok(answer.clone()))),
                None => distinct.push(key.as_str()),
            }
        }
        let mut queue: VecDeque<Attempt> = (0..distinct.len())
            .map(|key| Attempt {
                key,
                made: 0,
                at: now,
            })
            .collect();
        let mut flying: Vec<(Attempt, Pending)> = Vec::new();
        // Whether any lookup came to a definite end (an answer, the cache's
        // included, or a refusal that trying again cannot change): if none
        // did, the service is down or failing as a whole, and the batch
        // waits for it rather than dead-lettering every record. (A batch of
        // cached keys and one that always fails is the service working,
        // and that key's records are dead-lettered.)
        let mut heard = distinct.is_empty() || !answers.is_empty();
        while !queue.is_empty() || !flying.is_empty() {
            // Send what may go now, up to the limit.
            let now = Instant::now();
            let mut later = VecDeque::new();
            while flying.len() < self.options.concurrency {
                let Some(attempt) = queue.pop_front() else {
                    break;
                };
                if attempt.at > now {
                    later.push_back(attempt);
                    continue;
                }
                let sent = request(distinct[attempt.key])
                    .connect_timeout(self.options.timeout)
                    .response_timeout(self.options.timeout)
                    .start();
                match sent {
                    Ok(pending) => flying.push((attempt, pending)),
                    Err(HttpError::Interrupted) => return Err(interrupted()),
                    Err(e @ HttpError::Denied(_)) => return Err(e.into()),
                    Err(HttpError::Url(why)) => {
                        heard = true;
                        let tried = Tried::Done(Err(format!("bad URL: {why}")));
                        self.settle(attempt, tried, &distinct, &mut later, &mut answers);
                    }
                    Err(e) => {
                        let tried = passing(e);
                        self.settle(attempt, tried, &distinct, &mut later, &mut answers);
                    }
                }
            }
            later.extend(queue.drain(..));
            queue = later;
            if flying.is_empty() && queue.is_empty() {
                break;
            }
            // Wait for an answer, or for the next retry's time.
            let next_retry = queue.iter().map(|a| a.at).min();
            {
                let mut waits: Vec<_> = flying.iter().map(|(_, p)| p.subscribe()).collect();
                if let Some(at) = next_retry.filter(|_| flying.len() < self.options.concurrency) {
                    let nanos = at.saturating_duration_since(Instant::now()).as_nanos();
                    waits.push(wasip2::clocks::monotonic_clock::subscribe_duration(
                        u64::try_from(nanos).unwrap_or(u64::MAX),
                    ));
                }
                let refs: Vec<_> = waits.iter().collect();
                if !refs.is_empty() {
                    wasip2::io::poll::poll(&refs);
                }
            }
            if crate::interrupted() {
                return Err(interrupted());
            }
            let mut i = 0;
            while i < flying.len() {
                let Some(done) = flying[i].1.take() else {
                    i += 1;
                    continue;
                };
                let (attempt, _) = flying.swap_remove(i);
                let tried = match done {
                    Ok(response) => self.answer(response),
                    Err(HttpError::Interrupted) => return Err(interrupted()),
                    Err(e) => passing(e),
                };
                if matches!(&tried, Tried::Again { why, .. } if why == INTERRUPTED) {
                    return Err(interrupted());
                }
                heard |= matches!(tried, Tried::Done(_));
                self.settle(attempt, tried, &distinct, &mut queue, &mut answers);
            }
        }
        if crate::interrupted() {
            return Err(interrupted());
        }
        if !heard && let Some((_, Err(why))) = answers.iter().find(|(_, a)| a.is_err()) {
            return Err(Error::Retriable(format!(
                "the lookup service is down or failing (no lookup of the batch came to an end): {why}"
            )));
        }
        Ok(answers)
    }

    /// Records an attempt's outcome: an answer (cached), or a retry queued.
    fn settle<'k>(
        &mut self,
        attempt: Attempt,
        tried: Tried,
        distinct: &[&'k str],
        queue: &mut VecDeque<Attempt>,
        answers: &mut Vec<Looked<'k>>,
    ) {
        let key = distinct[attempt.key];
        match tried {
            Tried::Done(answer) => {
                if let (Some(_), Ok(a)) = (self.options.cache_ttl, &answer) {
                    if self.cache.len() >= self.options.cache_capacity {
                        self.cache.clear();
                    }
                    self.cache
                        .insert(key.to_owned(), (Instant::now(), a.clone()));
                }
                answers.push((key, answer));
            }
            Tried::Again { why, .. } if attempt.made >= self.options.retries => {
                let tries = attempt.made + 1;
                answers.push((key, Err(format!("{why} ({tries} tries)"))));
            }
            Tried::Again { after, .. } => {
                let backoff = self
                    .options
                    .backoff
                    .checked_mul(2u32.saturating_pow(attempt.made))
                    .map_or(MAX_BACKOFF, |b| b.min(MAX_BACKOFF));
                let wait = after.map_or(backoff, |a| a.min(self.options.max_retry_after));
                queue.push_back(Attempt {
                    key: attempt.key,
                    made: attempt.made + 1,
                    at: Instant::now() + wait,
                });
            }
        }
    }

    /// What a response says: its body read within the timeout.
    fn answer(&self, response: Response) -> Tried {
        let status = response.status();
        match status {
            200..=299 => {}
            404 => return Tried::Done(Ok(Answer::Missing)),
            408 | 429 | 500..=599 => {
                return Tried::Again {
                    after: response.retry_after(),
                    why: format!("the service answered {status}"),
                };
            }
            _ => {
                let mut body = Vec::new();
                let _ = read_body(response, self.options.timeout, &mut body);
                let said = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
                return Tried::Done(Err(format!("the service answered {status}: {said}")));
            }
        }
        let mut body = Vec::new();
        match read_body(response, self.options.timeout, &mut body) {
            Ok(()) => Tried::Done(Ok(Answer::Found(body))),
            Err(why) => Tried::Again { why, after: None },
        }
    }
}

/// Reads a response's body within `limit`.
fn read_body(response: Response, limit: Duration, out: &mut Vec<u8>) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    let mut body = response.into_body();
    let mut buf = [0u8; 8192];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("the body did not come within {limit:?}"));
        }
        match body.read_within(&mut buf, left) {
            Ok(0) => return Ok(()),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => return Err(INTERRUPTED.into()),
            Err(e) => return Err(format!("reading the body: {e}")),
        }
    }
}

/// A failure to send or to get the head: worth another try.
fn passing(e: HttpError) -> Tried {
    Tried::Again {
        why: e.to_string(),
        after: None,
    }
}

/// What [`read_body`] says when the host interrupted the read.
const INTERRUPTED: &str = "interrupted";

fn interrupted() -> Error {
    Error::Retriable("interrupted while looking up (stop, pause or swap)".into())
}
