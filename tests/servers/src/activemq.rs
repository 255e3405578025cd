//! ActiveMQ: a broker of Debian's package `activemq` (5.17) of the test's
//! own, speaking MQTT and STOMP on free 127.0.0.1 ports, its KahaDB in a
//! temporary directory, killed (with its JVM) when dropped.
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
    child: Child,
    mqtt_port: u16,
    stomp_port: u16,
    dir: tempfile::TempDir,
}

impl ActiveMq {
    /// Starts a broker that lets anyone in; `None` (the test skips) when
    /// ActiveMQ or its MQTT codec is not installed and `CI` is unset.
    pub fn start() -> Option<ActiveMq> {
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
        let config = format!(
            r#"<beans xmlns="http://www.springframework.org/schema/beans"
  xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
  xsi:schemaLocation="http://www.springframework.org/schema/beans http://www.springframework.org/schema/beans/spring-beans.xsd
  http://activemq.apache.org/schema/core http://activemq.apache.org/schema/core/activemq-core.xsd">
  <broker xmlns="http://activemq.apache.org/schema/core" brokerName="test" dataDirectory="{data}" useJmx="false" persistent="true">
    <transportConnectors>
      <transportConnector name="mqtt" uri="mqtt://127.0.0.1:{mqtt_port}"/>
      <transportConnector name="stomp" uri="stomp://127.0.0.1:{stomp_port}"/>
    </transportConnectors>
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
        let log = std::fs::File::create(d.join("activemq.log")).expect("the broker's log");
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
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", mqtt_port)).is_err()
            || TcpStream::connect(("127.0.0.1", stomp_port)).is_err()
        {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "activemq exited at start: {status}: {}",
                    std::fs::read_to_string(d.join("activemq.log")).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "activemq did not listen in 60 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(ActiveMq {
            child,
            mqtt_port,
            stomp_port,
            dir,
        })
    }

    /// `127.0.0.1:port` of its MQTT listener.
    pub fn mqtt_addr(&self) -> String {
        format!("127.0.0.1:{}", self.mqtt_port)
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
        // `su` puts the JVM in a session of its own, out of the child's
        // process group: it is found by its directory on its command line.
        let dir = self.dir.path().to_string_lossy().into_owned();
        for pid in processes_naming(&dir) {
            // SAFETY: kill(2) on a process id just read from /proc.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        // SAFETY: kill(2) on the process group this child leads.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
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
