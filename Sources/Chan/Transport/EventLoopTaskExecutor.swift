import NIOCore

/// Runs Swift tasks on a NIO event loop.
///
/// A task that prefers this executor (`withTaskExecutorPreference(session.taskExecutor)`)
/// runs on the same thread that reads and writes the session's transport: a reply
/// resumes its caller without waking another thread, and a send made there reaches the
/// socket without a hop. Use it for handlers that do not block; blocking work belongs on
/// the default executor.
public final class EventLoopTaskExecutor: TaskExecutor, Sendable {
    /// The loop the jobs run on.
    public let eventLoop: any EventLoop

    /// An executor that runs its jobs on `eventLoop`.
    public init(eventLoop: any EventLoop) {
        self.eventLoop = eventLoop
    }

    /// Schedules `job` to run on the event loop (the `TaskExecutor` requirement).
    public func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        eventLoop.execute {
            job.runSynchronously(on: self.asUnownedTaskExecutor())
        }
    }
}

extension Session {
    /// A task executor on this session's event loop (see ``EventLoopTaskExecutor``).
    public var taskExecutor: EventLoopTaskExecutor { executorOnLoop }
}
