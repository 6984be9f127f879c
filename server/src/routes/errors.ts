// The contract's error body: {code, message, errors[]}; thrown from anywhere, rendered by plugins/errors.ts.
export interface FieldError {
  field: string;
  reason: string;
}

export class ApiError extends Error {
  constructor(
    readonly statusCode: number,
    readonly code: string,
    message: string,
    readonly errors: FieldError[] = [],
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }
}

export const validationError = (errors: FieldError[]): ApiError =>
  new ApiError(422, 'INPUT_VALIDATION_FAILED', errors.map((e) => `${e.field}: ${e.reason}`).join('; '), errors);

export const runNotFound = (id: string): ApiError => new ApiError(404, 'RUN_NOT_FOUND', `run ${id} not found`);
