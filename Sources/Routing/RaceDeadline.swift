import Chan
import NIOConcurrencyHelpers

/// Resumes a continuation once, whichever of result, deadline, abort or cancellation comes first.
/// `@unchecked Sendable`: the continuation and the cleanups are guarded by `lock`.
private final class Once<T: Sendable>: @unchecked Sendable {
    private let lock = NIOLock()
    private var continuation: UnsafeContinuation<T, any Error>?
    private var cleanups: [@Sendable () -> Void] = []

    init(_ continuation: UnsafeContinuation<T, any Error>) { self.continuation = continuation }

    func onFinish(_ cleanup: @escaping @Sendable () -> Void) {
        let runNow: Bool = lock.withLock {
            if continuation == nil { return true }
            cleanups.append(cleanup)
            return false
        }
        if runNow { cleanup() }
    }

    func finish(_ result: Result<T, any Error>) {
        let (c, cleanups): (UnsafeContinuation<T, any Error>?, [@Sendable () -> Void]) = lock.withLock {
            defer { continuation = nil; self.cleanups = [] }
            return (continuation, self.cleanups)
        }
        guard let c else { return }
        for cleanup in cleanups { cleanup() }
        c.resume(with: result)
    }
}

/// Runs `body` in its own task and returns its result, unless the deadline passes, the
/// owner is aborted, or the caller is cancelled first — then that error, at once.
func raceDeadline<T: Sendable>(
    timeout: Duration,
    owner: String,
    tracking calls: InFlightCalls?,
    timeoutError: @escaping @Sendable () -> RoutingError,
    _ body: @escaping @Sendable () async throws -> T
) async throws -> T {
    let holder = NIOLockedValueBox<Once<T>?>(nil)
    return try await withTaskCancellationHandler {
        try await withUnsafeThrowingContinuation { (continuation: UnsafeContinuation<T, any Error>) in
            let once = Once(continuation)
            holder.withLockedValue { $0 = once }
            // Tracked before the handler starts, so an abort reaches it even while it runs.
            let workBox = NIOLockedValueBox<Task<Void, Never>?>(nil)
            if let calls {
                let id = calls.register(owner: owner) { error in
                    once.finish(.failure(error))
                    workBox.withLockedValue { $0 }?.cancel()
                }
                once.onFinish { calls.remove(id) }
            }
            // Task.immediate runs `body` on this thread until it first suspends: a handler that
            // answers at once costs no thread hop, and one that hangs is still its own task,
            // which the deadline can abandon.
            let work = Task.immediate {
                do { once.finish(.success(try await body())) } catch { once.finish(.failure(error)) }
            }
            workBox.withLockedValue { $0 = work }
            let timer = DeadlineSweeper.shared.schedule(in: timeout) {
                once.finish(.failure(timeoutError()))
                work.cancel()
            }
            once.onFinish { DeadlineSweeper.shared.cancel(timer) }
        }
    } onCancel: {
        holder.withLockedValue { $0 }?.finish(.failure(CancellationError()))
    }
}
