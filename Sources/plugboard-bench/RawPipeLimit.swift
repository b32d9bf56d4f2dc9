#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import Spawn

/// The raw limit: two processes bouncing a fixed-size message over two plain pipes with
/// blocking read/write. Nothing Plugboard does can beat this on the same machine.
struct RawPipeLimit {
    struct Result {
        var p50: Double
        var p99: Double
        var messagesPerSecond: Double
    }

    let payloadSize: Int

    /// Sequential ping-pong: one message in flight.
    func sequential(roundTrips: Int) throws -> Result {
        try withPeer { writeFD, readFD in
            var message = [UInt8](repeating: 0x5a, count: payloadSize)
            var samples = Samples()
            let warmup = min(1000, roundTrips / 10)
            let start = now()
            var timedStart = start
            for i in 0..<(roundTrips + warmup) {
                if i == warmup { timedStart = now() }
                let t0 = now()
                try writeAll(writeFD, &message)
                try readExactly(readFD, &message)
                if i >= warmup { samples.add(now() - t0) }
            }
            let elapsed = Double(now() - timedStart) / 1e9
            return Result(p50: samples.percentile(0.5), p99: samples.percentile(0.99), messagesPerSecond: Double(roundTrips) / elapsed)
        }
    }

    /// Pipelined: `inflight` messages in flight, a writer thread and a reader thread.
    func pipelined(roundTrips: Int, inflight: Int) throws -> Result {
        try withPeer { writeFD, readFD in
            let credits = Semaphore(value: inflight)
            let size = payloadSize
            let writer = Thread {
                var message = [UInt8](repeating: 0x5a, count: size)
                for _ in 0..<roundTrips {
                    credits.wait()
                    do { try writeAll(writeFD, &message) } catch { return }
                }
            }
            let start = now()
            writer.start()
            var message = [UInt8](repeating: 0, count: size)
            for _ in 0..<roundTrips {
                try readExactly(readFD, &message)
                credits.signal()
            }
            let elapsed = Double(now() - start) / 1e9
            writer.join()
            return Result(p50: 0, p99: 0, messagesPerSecond: Double(roundTrips) / elapsed)
        }
    }

    private func withPeer<R>(_ body: (CInt, CInt) throws -> R) throws -> R {
        let toChild = try PipeDescriptors.make()
        let fromChild = try PipeDescriptors.make()
        let child = try ProcessSpawner.spawn(SpawnOptions(
            executable: try selfExecutable(),
            arguments: ["pipe-peer", "--payload", String(payloadSize)],
            environment: ["PATH": "/usr/bin:/bin"],
            fileDescriptors: [3: toChild.readEnd, 4: fromChild.writeEnd, 2: 2]
        ))
        close(toChild.readEnd)
        close(fromChild.writeEnd)
        defer {
            close(toChild.writeEnd)
            close(fromChild.readEnd)
            child.signal(SIGTERM)
        }
        return try body(toChild.writeEnd, fromChild.readEnd)
    }
}

struct PipeError: Error, CustomStringConvertible {
    let description: String
}

func writeAll(_ fd: CInt, _ bytes: inout [UInt8]) throws {
    var offset = 0
    let count = bytes.count
    while offset < count {
        let n = bytes.withUnsafeBytes { buffer in buffer.baseAddress.map { write(fd, $0 + offset, count - offset) } ?? -1 }
        if n < 0 && errno == EINTR { continue }
        guard n > 0 else { throw PipeError(description: "write failed: errno \(errno)") }
        offset += n
    }
}

func readExactly(_ fd: CInt, _ bytes: inout [UInt8]) throws {
    var offset = 0
    let count = bytes.count
    while offset < count {
        let n = bytes.withUnsafeMutableBytes { buffer in buffer.baseAddress.map { read(fd, $0 + offset, count - offset) } ?? -1 }
        if n < 0 && errno == EINTR { continue }
        guard n > 0 else { throw PipeError(description: "read failed or EOF after \(offset) of \(count) bytes") }
        offset += n
    }
}

func selfExecutable() throws -> String {
    var buffer = [CChar](repeating: 0, count: 4096)
    let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
    guard n > 0 else { throw PipeError(description: "cannot read /proc/self/exe") }
    return String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

/// A counting semaphore over a pthread mutex and condition. `@unchecked Sendable`: the
/// count is guarded by that mutex, which the compiler cannot see.
final class Semaphore: @unchecked Sendable {
    private var value: Int
    private var mutex = pthread_mutex_t()
    private var condition = pthread_cond_t()

    init(value: Int) {
        self.value = value
        pthread_mutex_init(&mutex, nil)
        pthread_cond_init(&condition, nil)
    }

    func wait() {
        pthread_mutex_lock(&mutex)
        while value == 0 { pthread_cond_wait(&condition, &mutex) }
        value -= 1
        pthread_mutex_unlock(&mutex)
    }

    func signal() {
        pthread_mutex_lock(&mutex)
        value += 1
        pthread_cond_signal(&condition)
        pthread_mutex_unlock(&mutex)
    }
}

/// A joinable pthread running a closure. `@unchecked Sendable`: `thread` is written once
/// by start() before anyone joins.
final class Thread: @unchecked Sendable {
    private let body: () -> Void
    private var thread = pthread_t()

    init(_ body: @escaping () -> Void) { self.body = body }

    func start() {
        let box = Unmanaged.passRetained(self)
        pthread_create(&thread, nil, { raw in
            guard let raw else { return nil }
            let me = Unmanaged<Thread>.fromOpaque(raw).takeRetainedValue()
            me.body()
            return nil
        }, box.toOpaque())
    }

    func join() { pthread_join(thread, nil) }
}

/// The child side of the raw limit: echo fixed-size messages from fd 3 to fd 4.
struct PipePeer: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "pipe-peer", abstract: "Internal: the raw pipe echo child.", shouldDisplay: false)

    @Option(help: "Message size in bytes.")
    var payload: Int = 64

    func run() throws {
        var message = [UInt8](repeating: 0, count: payload)
        while true {
            do {
                try readExactly(3, &message)
                try writeAll(4, &message)
            } catch {
                return
            }
        }
    }
}
