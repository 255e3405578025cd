//! MQTT: a `mosquitto` broker (Debian's package `mosquitto`) of the test's
//! own, on a free 127.0.0.1 port, its sessions and queued messages
//! persisted in a temporary directory, killed when dropped. It can be
//! stopped (SIGTERM: it saves what it holds) and started again on the same
//! port and data, as an operator restarts it. The clients
//! (`mosquitto_pub`, `mosquitto_sub`, package `mosquitto-clients`) publish
//! and read as a third party.

use std::io::Write as _;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const BROKER: &str = "/usr/sbin/mosquitto";
/// The broker's own publisher, for the bench's limit.
pub const PUB: &str = "/usr/bin/mosquitto_pub";
const SUB: &str = "/usr/bin/mosquitto_sub";
const PASSWD: &str = "/usr/bin/mosquitto_passwd";

/// A running mosquitto broker, killed when dropped.
#[derive(Debug)]
pub struct Mosquitto {
    child: Option<Child>,
    port: u16,
    login: Option<(String, String)>,
    acl: Option<String>,
    dir: tempfile::TempDir,
}

impl Mosquitto {
    /// Starts a broker that lets anyone in; `None` (the test skips) when
    /// mosquitto is not installed and `CI` is unset.
    pub fn start() -> Option<Mosquitto> {
        Mosquitto::start_with(None, None)
    }

    /// Starts a broker whose clients must log in as `user` with
    /// `password`.
    pub fn start_with_login(user: &str, password: &str) -> Option<Mosquitto> {
        Mosquitto::start_with(Some((user.to_owned(), password.to_owned())), None)
    }

    /// Starts a broker whose clients log in as `user` with `password`, and
    /// may use only the topics `acl` (mosquitto's `acl_file` text) allows.
    pub fn start_with_acl(user: &str, password: &str, acl: &str) -> Option<Mosquitto> {
        Mosquitto::start_with(
            Some((user.to_owned(), password.to_owned())),
            Some(acl.to_owned()),
        )
    }

    fn start_with(login: Option<(String, String)>, acl: Option<String>) -> Option<Mosquitto> {
        let found = [BROKER, PUB, SUB, PASSWD]
            .iter()
            .find(|p| !std::path::Path::new(p).is_file())
            .map_or(Ok(()), |p| {
                Err(format!(
                    "no {p} (Debian packages mosquitto and mosquitto-clients)"
                ))
            });
        if !crate::required("mosquitto", found) {
            return None;
        }
        let mut broker = Mosquitto {
            child: None,
            port: crate::free_port(),
            login,
            acl,
            dir: tempfile::tempdir().expect("a temporary directory"),
        };
        broker.write_config();
        broker.resume();
        Some(broker)
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The broker's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }

    fn write_config(&self) {
        let dir = self.dir.path();
        let mut config = format!(
            "listener {port} 127.0.0.1\n\
             persistence true\n\
             persistence_location {dir}/\n\
             log_dest file {dir}/mosquitto.log\n\
             log_type error\nlog_type warning\nlog_type notice\n\
             # Everything queued for a source that is away is kept (the\n\
             # default keeps 1,000 and drops the rest), and a batch can hold\n\
             # more than 20 unacknowledged messages (not unbounded: past\n\
             # 65,535 in flight mosquitto gives packet ids out twice).\n\
             max_queued_messages 0\n\
             max_inflight_messages 1000\n",
            port = self.port,
            dir = dir.display(),
        );
        if crate::is_root() {
            // Otherwise it becomes the package's `mosquitto` user, who
            // cannot read this directory.
            config.push_str("user root\n");
        }
        match &self.login {
            None => config.push_str("allow_anonymous true\n"),
            Some((user, password)) => {
                let file = dir.join("passwords");
                let made = Command::new(PASSWD)
                    .arg("-b")
                    .arg("-c")
                    .arg(&file)
                    .args([user, password])
                    .output()
                    .expect("mosquitto_passwd runs");
                assert!(
                    made.status.success(),
                    "mosquitto_passwd: {}",
                    String::from_utf8_lossy(&made.stderr)
                );
                config.push_str(&format!(
                    "allow_anonymous false\npassword_file {}\n",
                    file.display()
                ));
            }
        }
        if let Some(acl) = &self.acl {
            let file = dir.join("acl");
            std::fs::write(&file, acl).expect("the ACL file written");
            config.push_str(&format!("acl_file {}\n", file.display()));
        }
        std::fs::write(self.config_path(), config).expect("mosquitto.conf written");
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("mosquitto.conf")
    }

    /// MQTT clients of this broker's (as its user, if it has one).
    pub fn clients(&self) -> MqttClients {
        MqttClients {
            port: self.port,
            login: self.login.clone(),
        }
    }

    /// See [`MqttClients::publish`].
    pub fn publish(&self, topic: &str, messages: impl IntoIterator<Item = String>) {
        self.clients().publish(topic, messages);
    }

    /// See [`MqttClients::subscribe`].
    pub fn subscribe(&self, client_id: &str, filter: &str, out: &std::path::Path) -> Subscriber {
        self.clients().subscribe(client_id, filter, out)
    }

    /// See [`MqttClients::make_session`].
    pub fn make_session(&self, client_id: &str, filter: &str) {
        self.clients().make_session(client_id, filter);
    }

    /// Stops the broker as an operator would (SIGTERM: it saves its
    /// sessions and queued messages), keeping its data.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on the pid of a child we have not reaped.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
        }
    }

    /// Starts the broker again on the same port and data.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "the broker runs already");
        let mut child = Command::new(BROKER)
            .arg("-c")
            .arg(self.config_path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto starts");
        crate::wait_listening(
            &mut child,
            "mosquitto",
            &[self.port],
            Duration::from_secs(20),
            || self.log(),
        );
        self.child = Some(child);
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The tests' MQTT clients of a broker on 127.0.0.1 (mosquitto, or
/// ActiveMQ's MQTT transport): `mosquitto_sub`, and a publisher of our own.
#[derive(Debug, Clone)]
pub struct MqttClients {
    port: u16,
    login: Option<(String, String)>,
}

impl MqttClients {
    /// Clients of the broker on `port`, logging in as `login` if given.
    pub fn new(port: u16, login: Option<(String, String)>) -> MqttClients {
        MqttClients { port, login }
    }

    /// The login arguments of the clients.
    fn login_args(&self) -> Vec<String> {
        match &self.login {
            None => Vec::new(),
            Some((u, p)) => vec!["-u".into(), u.clone(), "-P".into(), p.clone()],
        }
    }

    /// Publishes each of `messages` to `topic` at QoS 1, 1000 in flight,
    /// and returns once the broker acknowledged every one. (Not
    /// `mosquitto_pub -l`: the one in Debian 12, 2.0.11, disconnects at the
    /// end of its input with its window still in flight, and most of a
    /// long input never reaches the broker.)
    pub fn publish(&self, topic: &str, messages: impl IntoIterator<Item = String>) {
        use mqttbytes::v4;
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("mosquitto answers");
        let mut out = bytes::BytesMut::new();
        let mut connect = v4::Connect::new("test-publisher");
        if let Some((u, p)) = &self.login {
            connect.set_login(u.as_str(), p.as_str());
        }
        connect.write(&mut out).expect("CONNECT encodes");
        stream.write_all(&out).expect("CONNECT sent");
        out.clear();
        let mut read = bytes::BytesMut::new();
        let mut next = |stream: &mut TcpStream| -> v4::Packet {
            loop {
                match v4::read(&mut read, 1 << 20) {
                    Ok(p) => return p,
                    Err(mqttbytes::Error::InsufficientBytes(_)) => {
                        let mut chunk = [0u8; 65536];
                        let n = std::io::Read::read(stream, &mut chunk).expect("mosquitto answers");
                        assert!(n > 0, "mosquitto closed the connection");
                        read.extend_from_slice(&chunk[..n]);
                    }
                    Err(e) => panic!("mosquitto sent what is not MQTT: {e:?}"),
                }
            }
        };
        match next(&mut stream) {
            v4::Packet::ConnAck(a) if a.code == v4::ConnectReturnCode::Success => {}
            other => panic!("mosquitto refused the publisher: {other:?}"),
        }
        let (mut inflight, mut pkid) = (0usize, 0u16);
        for m in messages {
            while inflight >= 1000 {
                stream.write_all(&out).expect("publishes sent");
                out.clear();
                if let v4::Packet::PubAck(_) = next(&mut stream) {
                    inflight -= 1;
                }
            }
            pkid = pkid % 65535 + 1;
            let mut p = v4::Publish::new(topic, mqttbytes::QoS::AtLeastOnce, m.into_bytes());
            p.pkid = pkid;
            p.write(&mut out).expect("PUBLISH encodes");
            inflight += 1;
        }
        stream.write_all(&out).expect("publishes sent");
        while inflight > 0 {
            if let v4::Packet::PubAck(_) = next(&mut stream) {
                inflight -= 1;
            }
        }
        stream.write_all(&[0xE0, 0x00]).expect("DISCONNECT sent");
    }

    /// Starts `mosquitto_sub` on `filter` at QoS 1 as `client_id` with a
    /// persistent session, writing each payload as a line to `out`.
    pub fn subscribe(&self, client_id: &str, filter: &str, out: &std::path::Path) -> Subscriber {
        let file = std::fs::File::create(out).expect("the subscriber's output");
        let child = Command::new(SUB)
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(self.login_args())
            .args(["-q", "1", "-c", "-i", client_id, "-t", filter])
            .stdout(file)
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto_sub runs");
        // The subscription is made once it connected; a message published
        // before then would not reach it.
        std::thread::sleep(Duration::from_millis(300));
        Subscriber { child }
    }

    /// Makes the persistent session `client_id` with a subscription to
    /// `filter` at QoS 1, and leaves: the broker then queues what is
    /// published for it.
    pub fn make_session(&self, client_id: &str, filter: &str) {
        let out = Command::new(SUB)
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(self.login_args())
            .args(["-q", "1", "-c", "-i", client_id, "-t", filter, "-E"])
            .output()
            .expect("mosquitto_sub runs");
        assert!(
            out.status.success(),
            "mosquitto_sub -E: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A `mosquitto_sub` reading in the background, killed when dropped.
#[derive(Debug)]
pub struct Subscriber {
    child: Child,
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
