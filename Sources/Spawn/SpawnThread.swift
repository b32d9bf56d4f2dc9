#if canImport(Glibc)
import Glibc
#endif

/// One thread, alive as long as the process, that performs every `posix_spawn`.
///
/// Linux's parent-death signal (which `plugboard-exec-shim` sets so that plugins die with
/// the daemon) fires when the *thread* that created the child exits, not the process.
/// Swift's pool threads come and go, so spawning from one of them would kill healthy
/// plugins whenever that thread retired. Spawning here ties children to this thread,
/// which lives until the process does.
///
/// `@unchecked Sendable`: its queue is guarded by a pthread mutex and condition, which the
/// compiler cannot see.
final class SpawnThread: @unchecked Sendable {
    static let shared = SpawnThread()

    private var mutex = pthread_mutex_t()
    private var condition = pthread_cond_t()
    // Guarded by `mutex`.
    private var queue: [() -> Void] = []

    private init() {
        pthread_mutex_init(&mutex, nil)
        pthread_cond_init(&condition, nil)
        var thread = pthread_t()
        let me = Unmanaged.passRetained(self)
        pthread_create(&thread, nil, { raw in
            guard let raw else { return nil }
            Unmanaged<SpawnThread>.fromOpaque(raw).takeUnretainedValue().loop()
            return nil
        }, me.toOpaque())
        pthread_detach(thread)
    }

    private func loop() {
        while true {
            pthread_mutex_lock(&mutex)
            while queue.isEmpty { pthread_cond_wait(&condition, &mutex) }
            let work = queue.removeFirst()
            pthread_mutex_unlock(&mutex)
            work()
        }
    }

    /// Runs `body` on the spawn thread and returns its result (the caller blocks briefly).
    func run<T>(_ body: @escaping () -> T) -> T {
        var result: T?
        var done = false
        var doneMutex = pthread_mutex_t()
        var doneCondition = pthread_cond_t()
        pthread_mutex_init(&doneMutex, nil)
        pthread_cond_init(&doneCondition, nil)
        defer {
            pthread_mutex_destroy(&doneMutex)
            pthread_cond_destroy(&doneCondition)
        }
        withUnsafeMutablePointer(to: &doneMutex) { m in
            withUnsafeMutablePointer(to: &doneCondition) { c in
                let work = {
                    let value = body()
                    pthread_mutex_lock(m)
                    result = value
                    done = true
                    pthread_cond_signal(c)
                    pthread_mutex_unlock(m)
                }
                pthread_mutex_lock(&mutex)
                queue.append(work)
                pthread_cond_signal(&condition)
                pthread_mutex_unlock(&mutex)
                pthread_mutex_lock(m)
                while !done { pthread_cond_wait(c, m) }
                pthread_mutex_unlock(m)
            }
        }
        // `done` was set under the mutex together with `result`.
        guard let result else { preconditionFailure("spawn thread returned no result") }
        return result
    }
}
