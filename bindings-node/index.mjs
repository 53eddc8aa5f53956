// ESM entry: the same module as `require('tasker')`.
import { createRequire } from 'node:module'
const tasker = createRequire(import.meta.url)('./index.js')
export const {
  Engine,
  Step,
  TaskerError,
  TemplateError,
  ValidationError,
  NotFoundError,
  ConflictError,
  DatabaseError,
  TimeoutError,
  RetryableError,
  PermanentError,
  Decision,
  Batches,
  ChildTask,
  Wait,
  Reschedule
} = tasker
export default tasker
