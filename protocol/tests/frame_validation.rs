//! The frame codec on its own: round trips of every message shape, and hostile input
//! (random bytes, truncation, oversized lengths) that must give an error value, never a
//! panic or a huge allocation.

use proptest::prelude::*;
use warden_protocol::frame::{self, FrameError, DEFAULT_MAX_FRAME, PREFIX_LEN};
use warden_protocol::*;

fn limits() -> impl Strategy<Value = ExecutionLimits> {
    (
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        any::<u32>(),
        any::<u64>(),
    )
        .prop_map(
            |(memory_bytes, cpu_seconds, open_files, max_log_lines, max_log_bytes)| {
                ExecutionLimits {
                    memory_bytes,
                    cpu_seconds,
                    open_files,
                    processes: open_files / 2,
                    max_log_lines,
                    max_log_bytes,
                    max_result_bytes: max_log_bytes / 3,
                    file_bytes: memory_bytes / 5,
                }
            },
        )
}

fn to_worker() -> impl Strategy<Value = ToWorker> {
    prop_oneof![
        (any::<u32>(), any::<bool>(), proptest::option::of(".*")).prop_map(|(v, a, r)| {
            ToWorker::Welcome(Welcome {
                protocol_version: v,
                accepted: a,
                reason: r,
            })
        }),
        (".*", ".*", ".*", "[a-z_]{0,20}", ".*", limits()).prop_map(
            |(execution_id, path, source, function, params_json, limits)| {
                ToWorker::Execute(Execute {
                    org: function.clone(),
                    code: Code::Cached(source.as_bytes().to_vec()),
                    execution_id,
                    path,
                    source,
                    function,
                    params_json,
                    context_json: "{}".into(),
                    modules_generation: limits.cpu_seconds,
                    modules_manifest: limits.cpu_seconds,
                    limits,
                })
            }
        ),
        ".*".prop_map(|execution_id| ToWorker::Kill { execution_id }),
        Just(ToWorker::Shutdown),
        (".*", any::<u32>(), any::<bool>(), ".*").prop_map(
            |(execution_id, request_id, ok, text)| {
                ToWorker::Reply(Reply {
                    execution_id,
                    request_id,
                    outcome: if ok {
                        ReplyOutcome::Ok { value_json: text }
                    } else {
                        ReplyOutcome::Err { message: text }
                    },
                })
            }
        ),
    ]
}

fn exit_kind() -> impl Strategy<Value = ExitKind> {
    prop_oneof![
        any::<i32>().prop_map(ExitKind::Exited),
        any::<i32>().prop_map(ExitKind::Signaled),
        Just(ExitKind::InProcess),
        ".*".prop_map(ExitKind::ProtocolError),
    ]
}

fn from_worker() -> impl Strategy<Value = FromWorker> {
    let level = prop_oneof![
        Just(LogLevel::Debug),
        Just(LogLevel::Info),
        Just(LogLevel::Warning),
        Just(LogLevel::Error),
        Just(LogLevel::Critical),
    ];
    prop_oneof![
        (
            any::<u32>(),
            any::<u64>(),
            any::<u32>(),
            any::<bool>(),
            ".*"
        )
            .prop_map(|(v, id, pid, fork, py)| FromWorker::Hello(Hello {
                protocol_version: v,
                worker_id: id,
                pid,
                isolation: if fork {
                    Isolation::Fork
                } else {
                    Isolation::Reuse
                },
                python_version: py,
            })),
        (".*", any::<u32>())
            .prop_map(|(execution_id, pid)| FromWorker::Started(Started { execution_id, pid })),
        (".*", any::<u32>(), any::<i64>(), level, ".*").prop_map(
            |(execution_id, seq, timestamp_us, level, message)| FromWorker::Log(Log {
                execution_id,
                seq,
                timestamp_us,
                level,
                message,
            })
        ),
        (".*", ".*", any::<u64>(), any::<bool>(), ".*").prop_map(
            |(execution_id, text, d, ok, tb)| {
                FromWorker::Result(ExecutionResult {
                    execution_id,
                    outcome: if ok {
                        Outcome::Success { result_json: text }
                    } else {
                        Outcome::Failed(ErrorInfo {
                            error_type: "ValueError".into(),
                            message: text,
                            traceback: tb,
                        })
                    },
                    duration_us: d,
                    logs_dropped: (d % 7) as u32,
                    sdk_writes_json: if ok { String::new() } else { "[]".into() },
                })
            }
        ),
        (".*", exit_kind(), any::<u64>(), any::<u64>()).prop_map(|(execution_id, exit, a, b)| {
            FromWorker::Ended(Ended {
                execution_id,
                exit,
                peak_memory_bytes: a,
                user_cpu_us: b,
                system_cpu_us: a ^ b,
                worker_rss_bytes: a / 2,
            })
        }),
        (".*", any::<u32>(), "[a-z_]{1,12}", ".*").prop_map(
            |(execution_id, request_id, op, args_json)| {
                FromWorker::Request(Request {
                    execution_id,
                    request_id,
                    op,
                    args_json,
                })
            }
        ),
    ]
}

proptest! {
    #[test]
    fn to_worker_round_trips(msg in to_worker()) {
        let buf = frame::encode(&msg, DEFAULT_MAX_FRAME).unwrap();
        let (back, used) = frame::parse::<ToWorker>(&buf, DEFAULT_MAX_FRAME).unwrap();
        prop_assert_eq!(used, buf.len());
        prop_assert_eq!(back, msg);
    }

    #[test]
    fn exact_encoding_is_the_same_frame_in_an_allocation_of_its_size(msg in to_worker()) {
        let exact = frame::encode_exact(&msg, DEFAULT_MAX_FRAME).unwrap();
        prop_assert_eq!(exact.capacity(), exact.len());
        prop_assert_eq!(exact, frame::encode(&msg, DEFAULT_MAX_FRAME).unwrap());
    }

    #[test]
    fn from_worker_round_trips_through_blocking_io(msgs in proptest::collection::vec(from_worker(), 1..8)) {
        let mut wire = Vec::new();
        for m in &msgs {
            io::write(&mut wire, m, DEFAULT_MAX_FRAME).unwrap();
        }
        let mut r = &wire[..];
        for m in &msgs {
            let back: FromWorker = io::read(&mut r, DEFAULT_MAX_FRAME).unwrap().unwrap();
            prop_assert_eq!(&back, m);
        }
        // EOF between frames is a clean close.
        prop_assert!(io::read::<FromWorker, _>(&mut r, DEFAULT_MAX_FRAME).unwrap().is_none());
    }

    #[test]
    fn every_strict_prefix_is_incomplete(msg in from_worker()) {
        let buf = frame::encode(&msg, DEFAULT_MAX_FRAME).unwrap();
        for cut in 0..buf.len() {
            prop_assert!(matches!(frame::check(&buf[..cut], DEFAULT_MAX_FRAME), Err(FrameError::Incomplete)));
        }
    }

    #[test]
    fn truncated_stream_is_an_error_not_a_close(msg in from_worker(), cut_frac in 0.0f64..1.0) {
        let buf = frame::encode(&msg, DEFAULT_MAX_FRAME).unwrap();
        let cut = 1 + ((buf.len() - 1) as f64 * cut_frac) as usize;
        prop_assume!(cut < buf.len());
        let mut r = &buf[..cut];
        let got = io::read::<FromWorker, _>(&mut r, DEFAULT_MAX_FRAME);
        prop_assert!(matches!(got, Err(FrameError::Truncated { .. })), "got {:?}", got);
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        // Whatever comes out, it is a value: a message, Incomplete, TooLarge or Decode.
        let _ = frame::parse::<FromWorker>(&bytes, DEFAULT_MAX_FRAME);
        let _ = frame::parse::<ToWorker>(&bytes, DEFAULT_MAX_FRAME);
        let _ = frame::decode::<FromWorker>(&bytes);
        let _ = frame::decode::<ToWorker>(&bytes);
        let mut r = &bytes[..];
        while let Ok(Some(_)) = io::read::<FromWorker, _>(&mut r, DEFAULT_MAX_FRAME) {}
    }

    #[test]
    fn random_bodies_behind_a_valid_prefix_never_panic(body in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let mut buf = (body.len() as u32).to_be_bytes().to_vec();
        buf.extend_from_slice(&body);
        match frame::parse::<FromWorker>(&buf, DEFAULT_MAX_FRAME) {
            Ok((_, used)) => prop_assert_eq!(used, buf.len()),
            Err(FrameError::Decode { len, .. }) => prop_assert_eq!(len, body.len()),
            Err(other) => prop_assert!(false, "unexpected {:?}", other),
        }
    }
}

#[test]
fn oversized_length_is_refused_before_reading_the_body() {
    let max = 1024;
    let buf = (max as u32 + 1).to_be_bytes();
    assert!(matches!(
        frame::check(&buf, max),
        Err(FrameError::TooLarge {
            len: 1025,
            max: 1024
        })
    ));
    // A 4 GiB announcement over a stream errors at once, without allocating it.
    let mut r = &[0xffu8, 0xff, 0xff, 0xff, 1, 2, 3][..];
    assert!(matches!(
        io::read::<FromWorker, _>(&mut r, DEFAULT_MAX_FRAME),
        Err(FrameError::TooLarge { .. })
    ));
}

#[test]
fn encoding_refuses_a_message_over_the_maximum() {
    let msg = FromWorker::Log(Log {
        execution_id: "e".into(),
        seq: 0,
        timestamp_us: 0,
        level: LogLevel::Info,
        message: "x".repeat(2000),
    });
    assert!(matches!(
        frame::encode(&msg, 1000),
        Err(FrameError::TooLarge { max: 1000, .. })
    ));
    assert!(matches!(
        frame::encode_exact(&msg, 1000),
        Err(FrameError::TooLarge { max: 1000, .. })
    ));
}

#[test]
fn inner_length_larger_than_the_frame_is_a_decode_error() {
    // A Log whose execution_id claims 2^40 bytes: bincode must not try to allocate it.
    let mut body = vec![2u8]; // variant index of FromWorker::Log (varint)
    body.push(253); // varint marker for a u64
    body.extend_from_slice(&(1u64 << 40).to_le_bytes());
    let mut buf = (body.len() as u32).to_be_bytes().to_vec();
    buf.extend_from_slice(&body);
    assert!(matches!(
        frame::parse::<FromWorker>(&buf, DEFAULT_MAX_FRAME),
        Err(FrameError::Decode { .. })
    ));
}

#[test]
fn trailing_bytes_in_a_frame_are_rejected() {
    let mut body =
        frame::encode(&ToWorker::Shutdown, DEFAULT_MAX_FRAME).unwrap()[PREFIX_LEN..].to_vec();
    body.push(0);
    assert!(matches!(
        frame::decode::<ToWorker>(&body),
        Err(FrameError::Decode { .. })
    ));
}
