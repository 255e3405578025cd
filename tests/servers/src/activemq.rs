//! ActiveMQ: a broker of Debian's package `activemq` (5.17) of the test's
//! own, speaking MQTT and STOMP on free 127.0.0.1 ports, its KahaDB in a
//! temporary directory, killed (with its JVM) when dropped. Messages in
//! memory are held to 64 MiB (the rest wait in the store): without a
//! limit, and with half the JVM's 512 MiB heap as one, 400,000 messages of
//! 100 B queued for no consumer ran the heap out.
//!
//! Debian's ActiveMQ lacks the MQTT codec it was built against: the
//! package `libmqtt-client-java` has it, and goes on the broker's class
//! path. As root, Debian's `activemq` script runs the JVM as the package's
//! `activemq` user, so the directory is open to it.

use std::net::TcpStream;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

const SCRIPT: &str = "/usr/bin/activemq";
/// The MQTT codec and what it needs (package `libmqtt-client-java`).
const MQTT_JARS: [&str; 3] = [
    "/usr/share/java/mqtt-client.jar",
    "/usr/share/java/hawtdispatch.jar",
    "/usr/share/java/hawtdispatch-transport.jar",
];

/// A running ActiveMQ broker, killed when dropped.
#[derive(Debug)]
pub struct ActiveMq {
    child: Option<Child>,
    mqtt_port: u16,
    stomp_port: u16,
    login: Option<(String, String)>,
    dir: tempfile::TempDir,
}

impl ActiveMq {
    /// Starts a broker that lets anyone in; `None` (the test skips) when
    /// ActiveMQ or its MQTT codec is not installed and `CI` is unset.
    pub fn start() -> Option<ActiveMq> {
        ActiveMq::start_with(None, true)
    }

    /// Starts a broker as [`ActiveMq::start`] does whose journal is not
    /// synced to disk before a persistent send's receipt: a send is not an
    /// fsync (about ten times as fast here). For tests that kill the host,
    /// not the broker: ActiveMQ's MQTT transport was seen to lose an
    /// acknowledged message to a SIGKILL of the broker with syncs off.
    pub fn start_without_disk_syncs() -> Option<ActiveMq> {
        ActiveMq::start_with(None, false)
    }

    /// Starts a broker that lets only `user` in, with `password`, and lets
    /// it read and write the queues named `allowed.…` and no others.
    pub fn start_with_login(user: &str, password: &str) -> Option<ActiveMq> {
        ActiveMq::start_with(Some((user.to_owned(), password.to_owned())), true)
    }

    fn start_with(login: Option<(String, String)>, disk_syncs: bool) -> Option<ActiveMq> {
        let found = std::iter::once(SCRIPT)
            .chain(MQTT_JARS)
            .find(|p| !Path::new(p).is_file())
            .map_or(Ok(()), |p| {
                Err(format!(
                    "no {p} (Debian packages activemq and libmqtt-client-java)"
                ))
            });
        if !crate::required("activemq", found) {
            return None;
        }
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (mqtt_port, stomp_port) = (crate::free_port(), crate::free_port());
        let d = dir.path();
        let plugins = login.as_ref().map_or(String::new(), |(user, password)| {
            format!(
                r#"<plugins>
      <simpleAuthenticationPlugin>
        <users>
          <authenticationUser username="{user}" password="{password}" groups="users"/>
        </users>
      </simpleAuthenticationPlugin>
      <authorizationPlugin>
        <map>
          <authorizationMap>
            <authorizationEntries>
              <authorizationEntry queue="allowed.>" read="users" write="users" admin="users"/>
              <authorizationEntry topic="ActiveMQ.Advisory.>" read="users" write="users" admin="users"/>
            </authorizationEntries>
          </authorizationMap>
        </map>
      </authorizationPlugin>
    </plugins>"#
            )
        });
        let config = format!(
            r#"<beans xmlns="http://www.springframework.org/schema/beans"
  xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
  xsi:schemaLocation="http://www.springframework.org/schema/beans http://www.springframework.org/schema/beans/spring-beans.xsd
  http://activemq.apache.org/schema/core http://activemq.apache.org/schema/core/activemq-core.xsd">
  <broker xmlns="http://activemq.apache.org/schema/core" brokerName="test" dataDirectory="{data}" useJmx="false" persistent="true">
    <persistenceAdapter>
      <kahaDB directory="{data}/kahadb" enableJournalDiskSyncs="{disk_syncs}"/>
    </persistenceAdapter>
    <transportConnectors>
      <transportConnector name="mqtt" uri="mqtt://127.0.0.1:{mqtt_port}"/>
      <transportConnector name="stomp" uri="stomp://127.0.0.1:{stomp_port}"/>
    </transportConnectors>
    <systemUsage>
      <systemUsage>
        <memoryUsage><memoryUsage limit="64 mb"/></memoryUsage>
        <storeUsage><storeUsage limit="8 gb"/></storeUsage>
        <tempUsage><tempUsage limit="2 gb"/></tempUsage>
      </systemUsage>
    </systemUsage>
    {plugins}
  </broker>
</beans>
"#,
            data = d.join("data").display(),
        );
        std::fs::write(d.join("activemq.xml"), config).expect("activemq.xml written");
        std::fs::write(
            d.join("log4j.properties"),
            "log4j.rootLogger=WARN, stdout\n\
             log4j.appender.stdout=org.apache.log4j.ConsoleAppender\n\
             log4j.appender.stdout.layout=org.apache.log4j.PatternLayout\n\
             log4j.appender.stdout.layout.ConversionPattern=%d %-5p %c{1} - %m%n\n",
        )
        .expect("log4j.properties written");
        open_to_all(d);
        let mut broker = ActiveMq {
            child: None,
            mqtt_port,
            stomp_port,
            login,
            dir,
        };
        broker.resume();
        Some(broker)
    }

    /// Starts the broker (again) on its ports and data, and waits until
    /// it listens.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "the broker runs already");
        let d = self.dir.path();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join("activemq.log"))
            .expect("the broker's log");
        let mut child = Command::new(SCRIPT)
            .args([
                "console",
                &format!("xbean:file:{}", d.join("activemq.xml").display()),
            ])
            .env("ACTIVEMQ_BASE", d)
            .env("ACTIVEMQ_CONF", d)
            .env("ACTIVEMQ_DATA", d.join("data"))
            .env("ACTIVEMQ_TMP", d.join("tmp"))
            .env("ACTIVEMQ_PIDFILE", d.join("activemq.pid"))
            .env("ACTIVEMQ_USER_CLASSPATH", MQTT_JARS.join(":"))
            .stdout(log.try_clone().expect("the log twice"))
            .stderr(log)
            // Its own process group: the script, `su` and the JVM go
            // together when dropped.
            .process_group(0)
            .spawn()
            .expect("activemq starts");
        crate::wait_listening(
            &mut child,
            "activemq",
            &[self.mqtt_port, self.stomp_port],
            Duration::from_secs(60),
            || std::fs::read_to_string(d.join("activemq.log")).unwrap_or_default(),
        );
        self.child = Some(child);
    }

    /// Kills the broker (SIGKILL, the JVM with it): what it stored stays.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // `su` puts the JVM in a session of its own, out of the child's
        // process group: it is found by its directory on its command line.
        let dir = self.dir.path().to_string_lossy().into_owned();
        for pid in processes_naming(&dir) {
            // SAFETY: kill(2) on a process id just read from /proc.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        // SAFETY: kill(2) on the process group this child leads.
        unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
        let _ = child.wait();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !processes_naming(&dir).is_empty()
            || TcpStream::connect(("127.0.0.1", self.stomp_port)).is_ok()
        {
            assert!(Instant::now() < deadline, "activemq did not stop in 20 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `127.0.0.1:port` of its MQTT listener.
    pub fn mqtt_addr(&self) -> String {
        format!("127.0.0.1:{}", self.mqtt_port)
    }

    /// The tests' MQTT clients of its MQTT transport (as its user, if it
    /// has one).
    pub fn mqtt_clients(&self) -> crate::mosquitto::MqttClients {
        crate::mosquitto::MqttClients::new(self.mqtt_port, self.login.clone())
    }

    /// Its MQTT port.
    pub fn mqtt_port(&self) -> u16 {
        self.mqtt_port
    }

    /// `127.0.0.1:port` of its STOMP listener.
    pub fn stomp_addr(&self) -> String {
        format!("127.0.0.1:{}", self.stomp_port)
    }

    /// The broker's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("activemq.log")
    }
}

impl ActiveMq {
    /// Sends `messages` to `destination` over STOMP, persistent, each with
    /// a receipt (1,000 awaited at most), and returns once all are stored.
    pub fn send(&self, destination: &str, messages: impl IntoIterator<Item = String>) {
        self.send_as(destination, messages, "true");
    }

    /// Sends as [`ActiveMq::send`] does, but not persistent: the broker
    /// keeps them in memory (and its temporary store), not in its journal,
    /// so they are not written to disk one by one (four times as fast
    /// here) and do not outlive a broker restart.
    pub fn send_transient(&self, destination: &str, messages: impl IntoIterator<Item = String>) {
        self.send_as(destination, messages, "false");
    }

    fn send_as(
        &self,
        destination: &str,
        messages: impl IntoIterator<Item = String>,
        persistent: &str,
    ) {
        let mut conn = StompConn::connect(self.stomp_port, self.login.as_ref());
        let (mut sent, mut receipted) = (0u64, 0u64);
        for m in messages {
            while sent - receipted >= 1000 {
                conn.flush();
                match conn.read_frame() {
                    (c, _, _) if c == "RECEIPT" => receipted += 1,
                    (c, h, b) => panic!("activemq answered a SEND with {c} {h:?} {b:?}"),
                }
            }
            sent += 1;
            let receipt = sent.to_string();
            conn.queue_frame(
                "SEND",
                &[
                    ("destination", destination),
                    ("persistent", persistent),
                    ("receipt", &receipt),
                ],
                m.as_bytes(),
            );
        }
        conn.flush();
        while receipted < sent {
            match conn.read_frame() {
                (c, _, _) if c == "RECEIPT" => receipted += 1,
                (c, h, b) => panic!("activemq answered a SEND with {c} {h:?} {b:?}"),
            }
        }
    }

    /// Takes `n` messages from `destination` over STOMP, each acknowledged
    /// on its own as it comes (`client-individual`, as `stomp-source`
    /// does, 1,000 unacknowledged at most), and returns once it has.
    pub fn drain(&self, destination: &str, n: u64) {
        let mut conn = StompConn::connect(self.stomp_port, self.login.as_ref());
        conn.queue_frame(
            "SUBSCRIBE",
            &[
                ("id", "0"),
                ("destination", destination),
                ("ack", "client-individual"),
                ("activemq.prefetchSize", "1000"),
            ],
            b"",
        );
        conn.flush();
        for _ in 0..n {
            let (command, headers, body) = conn.read_frame();
            assert_eq!(command, "MESSAGE", "{headers:?} {body:?}");
            let ack = headers
                .iter()
                .find(|(n, _)| n == "ack")
                .map(|(_, v)| v.clone())
                .expect("an ack header");
            conn.queue_frame("ACK", &[("id", &ack)], b"");
            // Before a read that may wait, the acknowledgements go out: the
            // broker sends no more than the prefetch unacknowledged.
            if conn.write.len() >= 64 * 1024 || !conn.read.contains(&0) {
                conn.flush();
            }
        }
        conn.flush();
        conn.queue_frame("DISCONNECT", &[("receipt", "bye")], b"");
        conn.flush();
        while conn.read_frame().0 != "RECEIPT" {}
    }

    /// Consumes `destination` over STOMP (acknowledged as sent), writing
    /// each body as a line to `out`, until the [`Consumer`] is dropped.
    pub fn consume(&self, destination: &str, out: &Path) -> Consumer {
        let mut conn = StompConn::connect(self.stomp_port, self.login.as_ref());
        conn.queue_frame(
            "SUBSCRIBE",
            &[("id", "0"), ("destination", destination), ("ack", "auto")],
            b"",
        );
        conn.flush();
        conn.stream
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("a read timeout");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let mut file = std::fs::File::create(out).expect("the consumer's output");
        let thread = std::thread::spawn(move || {
            use std::io::Write as _;
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                let Some((command, headers, body)) = conn.try_read_frame() else {
                    continue;
                };
                assert_eq!(command, "MESSAGE", "{headers:?} {body:?}");
                file.write_all(&body).expect("written");
                file.write_all(b"\n").expect("written");
            }
        });
        Consumer {
            stop,
            thread: Some(thread),
        }
    }
}

/// A STOMP consumer of the test's, stopped when dropped.
#[derive(Debug)]
pub struct Consumer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A frame: command, headers, body.
type StompFrame = (String, Vec<(String, String)>, Vec<u8>);

/// The least of a STOMP 1.2 client, for the tests' own sends and reads.
struct StompConn {
    stream: TcpStream,
    read: Vec<u8>,
    write: Vec<u8>,
}

impl StompConn {
    fn connect(port: u16, login: Option<&(String, String)>) -> StompConn {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("activemq answers");
        stream.set_nodelay(true).expect("nodelay");
        let mut conn = StompConn {
            stream,
            read: Vec::new(),
            write: Vec::new(),
        };
        let mut headers = vec![("accept-version", "1.2"), ("host", "localhost")];
        if let Some((user, password)) = login {
            headers.push(("login", user));
            headers.push(("passcode", password));
        }
        conn.queue_frame("CONNECT", &headers, b"");
        conn.flush();
        match conn.read_frame() {
            (c, _, _) if c == "CONNECTED" => conn,
            (c, h, b) => panic!("activemq refused the test's client: {c} {h:?} {b:?}"),
        }
    }

    fn queue_frame(&mut self, command: &str, headers: &[(&str, &str)], body: &[u8]) {
        self.write.extend_from_slice(command.as_bytes());
        self.write.push(b'\n');
        for (name, value) in headers {
            self.write
                .extend_from_slice(format!("{name}:{value}\n").as_bytes());
        }
        if !body.is_empty() {
            self.write
                .extend_from_slice(format!("content-length:{}\n", body.len()).as_bytes());
        }
        self.write.push(b'\n');
        self.write.extend_from_slice(body);
        self.write.push(0);
    }

    fn flush(&mut self) {
        use std::io::Write as _;
        self.stream
            .write_all(&self.write)
            .expect("written to activemq");
        self.write.clear();
    }

    /// The next frame, waiting for it.
    fn read_frame(&mut self) -> StompFrame {
        loop {
            if let Some(f) = self.try_read_frame() {
                return f;
            }
        }
    }

    /// The next frame, if one is read whole before the read times out.
    fn try_read_frame(&mut self) -> Option<StompFrame> {
        loop {
            let start = self
                .read
                .iter()
                .take_while(|&&b| b == b'\n' || b == b'\r')
                .count();
            self.read.drain(..start);
            if let Some(end) = self.read.windows(2).position(|w| w == b"\n\n") {
                let head = String::from_utf8_lossy(&self.read[..end]).into_owned();
                let mut lines = head.lines();
                let command = lines.next().unwrap_or_default().to_owned();
                let headers: Vec<(String, String)> = lines
                    .filter_map(|l| l.split_once(':'))
                    .map(|(n, v)| (n.to_owned(), v.to_owned()))
                    .collect();
                let length = headers
                    .iter()
                    .find(|(n, _)| n == "content-length")
                    .map(|(_, v)| v.parse::<usize>().expect("a length"));
                let body_start = end + 2;
                let body_end = match length {
                    Some(n) if self.read.len() > body_start + n => Some(body_start + n),
                    Some(_) => None,
                    None => self.read[body_start..]
                        .iter()
                        .position(|&b| b == 0)
                        .map(|i| body_start + i),
                };
                if let Some(body_end) = body_end {
                    let body = self.read[body_start..body_end].to_vec();
                    self.read.drain(..=body_end);
                    return Some((command, headers, body));
                }
            }
            let mut chunk = [0u8; 65536];
            match std::io::Read::read(&mut self.stream, &mut chunk) {
                Ok(0) => panic!("activemq closed the test's connection"),
                Ok(n) => self.read.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return None;
                }
                Err(e) => panic!("reading from activemq: {e}"),
            }
        }
    }
}

/// Lets the package's `activemq` user read and write `dir`.
fn open_to_all(dir: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777))
        .expect("the directory opened");
    for entry in std::fs::read_dir(dir).expect("the directory read") {
        let path = entry.expect("an entry").path();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))
            .expect("a file opened");
    }
}

impl Drop for ActiveMq {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The processes whose command line holds `text`.
fn processes_naming(text: &str) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| {
            let e = e.ok()?;
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            String::from_utf8_lossy(&cmdline)
                .contains(text)
                .then_some(pid)
        })
        .collect()
}
