//! `stomp-sink`: sends records to a STOMP destination (an ActiveMQ queue,
//! as Bahir's ActiveMQ sink writes one), speaking STOMP 1.2 itself
//! (`sluice-stomp`) over the connection its `net` grant allows.
//!
//! - **A message a record**: the body is the record's value, the
//!   destination a template over the record (`"/queue/orders.{key}"`);
//!   persistent unless `persistent = false`; the key in the header
//!   `key_header` names, if it does; the header `sluice-id` is
//!   `<topic>/<partition>/<offset>`, the record's place in the log, so a
//!   consumer can tell a repeat.
//! - **Written when receipted.** Every send asks for a receipt; a batch's
//!   sends go out in a window of `max_inflight`, and `write` returns once
//!   the broker receipted every one of them (ActiveMQ receipts a
//!   persistent message once stored); the host commits only after that. A
//!   connection lost meanwhile is made again (said once, with backoff)
//!   and the sends not receipted are sent again: at least once, so a
//!   consumer can see a message twice (with one `sluice-id`) after an
//!   outage or a crash.
//! - **Refused on its merits**: a record whose destination cannot be made
//!   (no key for `{key}`) is dead-lettered with the reason, and so is a
//!   send the broker answers with an `ERROR` (not authorised for the
//!   destination, say), with the broker's message.
//! - A wrong password or an ungranted address fails at `open` with what to
//!   fix, the password in no message.
//!
//! It does not: send inside STOMP transactions, or carry the record's
//! headers into the message's.

mod config;

use std::collections::HashMap;
use std::time::Duration;

use sluice_sdk::outage::Outage;
use sluice_sdk::template::Template;
use sluice_sdk::{Batch, Context, Error, Origin, Rejects, Sink};
use sluice_stomp::{Client, ConnectOptions, Incoming, StompError};

pub use config::Config;

/// Where a record of the batch being written stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    /// Not sent on this connection yet.
    No,
    /// Sent, its receipt awaited.
    Awaiting,
    /// Receipted, or refused.
    Done,
}

/// The sink's state.
#[derive(Debug)]
pub struct StompSink {
    config: Config,
    destination: Template,
    options: ConnectOptions,
    client: Option<Client>,
    outage: Outage,
    /// The receipts awaited, and the batch record each is for.
    inflight: HashMap<u64, usize>,
    /// The last receipt number given out.
    last_receipt: u64,
    /// A destination rendered.
    scratch: Vec<u8>,
}

impl StompSink {
    /// Connects if there is no connection, waiting out a broker that is
    /// away (said once).
    fn connect(&mut self) -> Result<(), StompError> {
        while self.client.is_none() {
            match Client::connect(&self.options) {
                Ok(client) => {
                    self.outage.back();
                    self.client = Some(client);
                }
                Err(e) if e.is_interrupted() || !e.is_connection_lost() => return Err(e),
                Err(e) => {
                    self.outage.went_away(&e.to_string());
                    self.outage.wait(None);
                    if sluice_sdk::interrupted() {
                        return Err(StompError::Io(std::io::ErrorKind::Interrupted.into()));
                    }
                }
            }
        }
        Ok(())
    }

    /// Reads one frame (waiting up to three heart-beats, or 30 s without
    /// them: a broker silent that long is gone) and marks what it answers.
    fn take_receipt(
        &mut self,
        state: &mut [Sent],
        rejects: &mut Rejects,
    ) -> Result<(), StompError> {
        let wait = Duration::from_millis(self.config.heart_beat_ms.max(10_000) * 3);
        let client = self.client.as_mut().expect("connected");
        let frame = match client.next(None)? {
            Some(frame) => Some(frame),
            None => {
                // About to wait: a heart-beat makes our side acknowledge
                // what the broker sent, so it sends its held-back receipts
                // now (see sluice_stomp::Client::heart_beat).
                client.heart_beat();
                client.flush()?;
                client.next(Some(wait))?
            }
        };
        let answered = |receipt: &str| receipt.parse::<u64>().ok();
        match frame {
            Some(Incoming::Receipt(r)) => {
                if let Some(i) = answered(&r).and_then(|r| self.inflight.remove(&r)) {
                    state[i] = Sent::Done;
                }
                Ok(())
            }
            Some(Incoming::Error { receipt, message }) => {
                match receipt
                    .as_deref()
                    .and_then(answered)
                    .and_then(|r| self.inflight.remove(&r))
                {
                    Some(i) => {
                        state[i] = Sent::Done;
                        rejects.reject(i, format!("the broker refused the send: {message}"));
                        Ok(())
                    }
                    None => Err(StompError::Io(std::io::Error::other(format!(
                        "the broker said: {message}"
                    )))),
                }
            }
            Some(Incoming::Message(_)) => Ok(()),
            None => Err(StompError::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer from the broker within {wait:?}"),
            ))),
        }
    }

    /// Sends what of the batch is not done, on this connection, and waits
    /// for the receipts.
    fn try_write(
        &mut self,
        origin: &Origin,
        batch: &Batch<'_>,
        state: &mut [Sent],
        rejects: &mut Rejects,
    ) -> Result<(), StompError> {
        // Not called for a heart-beat period (no records): the broker may
        // have given the connection up; a new one, quietly.
        if self.client.as_ref().is_some_and(Client::is_stale) {
            self.client = None;
            self.inflight.clear();
        }
        self.connect()?;
        let window = self.config.max_inflight.max(1) as usize;
        let persistent: &[u8] = if self.config.persistent {
            b"true"
        } else {
            b"false"
        };
        for (i, r) in batch.iter().enumerate() {
            if state[i] != Sent::No {
                continue;
            }
            if self.inflight.len() >= window {
                // Down to half the window before sending more: sends go
                // out in bursts, not one per receipt.
                self.client.as_mut().expect("connected").flush()?;
                while self.inflight.len() > window / 2 {
                    self.take_receipt(state, rejects)?;
                }
            }
            let offset = origin.first_offset + i as u64;
            if self
                .destination
                .render(origin, offset, r.key, &mut self.scratch)
                .is_none()
            {
                rejects.reject(
                    i,
                    "a record without a key, and the destination template uses {key}",
                );
                state[i] = Sent::Done;
                continue;
            }
            if self.scratch.is_empty() {
                rejects.reject(i, "the destination is empty for this record");
                state[i] = Sent::Done;
                continue;
            }
            self.last_receipt += 1;
            let receipt = self.last_receipt.to_string();
            let id = format!("{}/{}/{offset}", origin.topic, origin.partition);
            let mut headers: Vec<(&str, &[u8])> = vec![
                ("receipt", receipt.as_bytes()),
                ("persistent", persistent),
                ("sluice-id", id.as_bytes()),
            ];
            if let (Some(name), Some(key)) = (&self.config.key_header, r.key) {
                headers.push((name, key));
            }
            if let Some(ct) = &self.config.content_type {
                headers.push(("content-type", ct.as_bytes()));
            }
            let client = self.client.as_mut().expect("connected");
            client.send(&self.scratch, r.value, &headers);
            self.inflight.insert(self.last_receipt, i);
            state[i] = Sent::Awaiting;
            if client.queued() >= 128 * 1024 {
                client.flush()?;
            }
        }
        self.client.as_mut().expect("connected").flush()?;
        while !self.inflight.is_empty() {
            self.take_receipt(state, rejects)?;
        }
        Ok(())
    }
}

impl Sink for StompSink {
    type Config = Config;

    fn open(config: Config, _ctx: &Context) -> Result<Self, Error> {
        let destination =
            Template::parse("destination", &config.destination).map_err(Error::invalid_config)?;
        let mut options = ConnectOptions::new(&config.addr);
        options.tls = sluice_sdk::net::tls_server_name(
            config.tls,
            config.server_name.as_deref(),
            &config.addr,
        );
        if let Some(host) = &config.host {
            options.host.clone_from(host);
        }
        options.login = config.user.clone();
        options.passcode = config.password.clone();
        options.heart_beat = Duration::from_millis(config.heart_beat_ms);
        let outage = Outage::new(
            format!("stomp-sink: {}", config.addr),
            (config.reconnect_initial_ms, config.reconnect_max_ms),
            ("reconnect_initial_ms", "reconnect_max_ms"),
        )?;
        let mut sink = StompSink {
            config,
            destination,
            options,
            client: None,
            outage,
            inflight: HashMap::new(),
            last_receipt: 0,
            scratch: Vec::new(),
        };
        // At open the broker must answer: a password or a grant to fix is
        // said now.
        let client = Client::connect(&sink.options).map_err(|e| sink.options.refused(&e))?;
        sink.client = Some(client);
        Ok(sink)
    }

    fn write(
        &mut self,
        origin: &Origin,
        batch: Batch<'_>,
        rejects: &mut Rejects,
    ) -> Result<(), Error> {
        let mut state = vec![Sent::No; batch.len()];
        loop {
            match self.try_write(origin, &batch, &mut state, rejects) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    // A new connection: what was in flight is sent again.
                    self.client = None;
                    self.inflight.clear();
                    for s in &mut state {
                        if *s == Sent::Awaiting {
                            *s = Sent::No;
                        }
                    }
                    if e.is_interrupted() {
                        return Err(Error::retriable("interrupted while waiting for the broker"));
                    }
                    if !e.is_connection_lost() {
                        return Err(self.options.refused(&e));
                    }
                    self.outage.went_away(&e.to_string());
                }
            }
        }
    }

    fn flush(&mut self) -> Result<(), Error> {
        // Each write waited for its receipts.
        Ok(())
    }

    fn close(&mut self) -> Result<(), Error> {
        if let Some(client) = self.client.take() {
            client.disconnect();
        }
        Ok(())
    }
}

sluice_sdk::export_sink!(StompSink);
