// The last line of defence for a long-running role: an error nothing else caught (a rejected promise with
// no handler, an exception thrown from a timer or stream callback) is logged and the process keeps serving.
// Ending the process would end every client's service for one request's fault; each such error is a
// defect to fix, which is why it is logged at error level with its stack and counted.
import type { Logger } from 'pino';

export interface ProcessGuard {
  /** Errors survived so far (for metrics and tests). */
  readonly survived: () => number;
  uninstall(): void;
}

export function guardProcess(logger: Logger): ProcessGuard {
  let survived = 0;
  const onRejection = (reason: unknown) => {
    survived++;
    logger.error({ err: reason }, 'unhandled promise rejection; the process keeps serving');
  };
  const onException = (err: Error, origin: string) => {
    survived++;
    logger.error({ err, origin }, 'uncaught exception; the process keeps serving');
  };
  process.on('unhandledRejection', onRejection);
  process.on('uncaughtException', onException);
  return {
    survived: () => survived,
    uninstall() {
      process.off('unhandledRejection', onRejection);
      process.off('uncaughtException', onException);
    },
  };
}
